"""Builds: from a BuildJob to its BuildOutput on the long-lived esbuilds.

builder (the Builder: slots, deadline, runs), jobs (what a build is asked), batch
(tailored builds sharing a run), pool (the esbuild processes), request (what esbuild is
sent), scratch (the entry files), outputs (what comes back, made into bundles), reports
(esbuild's errors, made safe and read), assets (images and fonts moved out, by hash).
"""
