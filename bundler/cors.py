"""Which other origins' pages may read what the service serves (CORS).

A classic script tag runs a bundle from any origin without asking; a module script, an
``import()``, a font named by a bundle's CSS and a page's own ``fetch`` of a source map
are fetched in CORS mode, and fail unless the answer names the page's origin. Bundles
come from their own host or a CDN, so that is the usual case, not the exception:
``--cors-origins`` is ``*`` by default (public bundles: any page may use them; no
credentials are ever asked for, so ``*`` is enough). An operator may list origins
instead: the page's ``Origin`` is echoed when listed, with ``Vary: Origin`` on every
answer so that a cache in front never hands one origin's answer to another.
``Timing-Allow-Origin`` follows it, so the loader can report the bytes a bundle cost
(Resource Timing hides them from another origin otherwise).
"""

from __future__ import annotations

from aiohttp import web

# What pages load from the service: bundles in both forms, their CSS and maps, the
# assets they name, a fallback's map, the loader.
SHARED_PATHS = frozenset(
    {
        "/bundle.js", "/bundle.js.map", "/bundle.mjs", "/bundle.mjs.map", "/bundle.css",
        "/bundle.css.map", "/fallback.js.map", "/loader.js", "/loader.mjs",
    }
)  # fmt: skip


def shared(path: str) -> bool:
    return path in SHARED_PATHS or path.startswith("/assets/")


def allow(allowed: str, request: web.Request, response: web.StreamResponse) -> None:
    """Adds the CORS headers ``allowed`` (``*``, a comma-separated list of origins, or
    empty: none) gives ``request``'s page, on what pages load from the service."""
    if not allowed or not shared(request.path):
        return
    if allowed == "*":
        value = "*"
    else:
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = request.headers.get("Origin", "")
        if origin not in {o.strip() for o in allowed.split(",")}:
            return
        value = origin
    response.headers["Access-Control-Allow-Origin"] = value
    response.headers["Timing-Allow-Origin"] = value
