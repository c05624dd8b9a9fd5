"""On-demand JavaScript bundling service: tailored bundles built by esbuild, cached."""

__version__ = "0.1.0"
