"""HTTP handlers: bundles (what pages load) and operations (what operators and the warm-up use)."""
