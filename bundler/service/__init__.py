"""The request path without HTTP.

core (BundleService: the answer race, admission and shedding, the lifecycle: start,
ready, drain, close), building (a tailored bundle from its spec), deferred (builds shed
now, made later), derived (gzip, CSS-less JavaScript, stylesheets, served maps), maps
(source maps on request), health (the data dir), figures (what /metrics shows). The
cache tiers it asks are bundler.tiers; the fleet it shares with, bundler.fleet.
"""
