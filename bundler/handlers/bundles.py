"""The bundle endpoints: /bundle.js, its module form /bundle.mjs, /bundle.css, their
source maps, the assets bundles name, and the package's own files (the demo page, the
loader); every body with an ETag per content-coding, a 304 for it, and brotli or gzip as
asked."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from bundler import css, logs
from bundler.bundle import Bundle
from bundler.errors import BadRequest
from bundler.keys import CLIENT, SERVICE
from bundler.negotiate import choose_encoding
from bundler.service.race import Answer, Mode
from bundler.settings import Settings
from bundler.spec import BundleSpec

JS_CONTENT_TYPE = "application/javascript; charset=utf-8"
CSS_CONTENT_TYPE = "text/css; charset=utf-8"
JSON_TYPE = "application/json"
IMMUTABLE = "public, max-age=31536000, immutable"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def bundle_response(
    request: web.Request,
    bundle: Bundle,
    headers: dict[str, str],
    content_type: str = JS_CONTENT_TYPE,
) -> web.Response:
    encoding = choose_encoding(request.headers.get("Accept-Encoding"))
    etag = bundle.etag(encoding)
    headers = {**headers, "Vary": "Accept-Encoding", "ETag": etag}
    candidates = request.if_none_match
    if candidates and any(c.value in ("*", etag.strip('"')) for c in candidates):
        return web.Response(status=304, headers=headers)
    if encoding != "identity":
        headers["Content-Encoding"] = encoding
    headers["Content-Type"] = content_type
    body = await request.app[SERVICE].body(bundle, encoding)
    return web.Response(body=body, headers=headers)


async def handle_bundle(request: web.Request) -> web.Response:
    return await script_response(request, module=False)


async def handle_bundle_module(request: web.Request) -> web.Response:
    """/bundle.mjs: the same bundle as an ES module (bundler.entry), for module scripts
    and import(); while it is cold, the version's fallback as a module (same exports)."""
    return await script_response(request, module=True)


async def script_response(request: web.Request, *, module: bool) -> web.Response:
    pairs = list(request.query.items())
    link = css_mode(pairs)
    answer, headers, _ = await answer_bundle(request, pairs, frozenset({"css"}), module)
    # css=link: the page links /bundle.css itself; the bundle does not add its CSS.
    bundle = await request.app[SERVICE].variant(answer.bundle, "js") if link else answer.bundle
    return await bundle_response(request, bundle, headers)


async def handle_bundle_css(request: web.Request) -> web.Response:
    """The CSS of the modules /bundle.js with the same query carries (empty if none), for
    pages that link a stylesheet (no flash of unstyled content, a strict CSP)."""
    answer, headers, spec = await answer_bundle(request, list(request.query.items()))
    # The map is the tailored bundle's (as for /bundle.js): a fallback's CSS names none.
    map_url = f"bundle.css.map?{spec.query}" if answer.mode.tailored else None
    stylesheet = await request.app[SERVICE].variant(answer.bundle, "css", map_url)
    return await bundle_response(request, stylesheet, headers, CSS_CONTENT_TYPE)


async def handle_bundle_css_map(request: web.Request) -> web.Response:
    """The source map of /bundle.css with the same query (the tailored bundle's CSS)."""
    return await map_response(request, of_css=True)


async def answer_bundle(
    request: web.Request,
    pairs: list[tuple[str, str]],
    other_params: frozenset[str] = frozenset(),
    module: bool = False,
) -> tuple[Answer, dict[str, str], BundleSpec]:
    service = request.app[SERVICE]
    settings = service.settings
    started = time.monotonic()
    spec, pinned = await service.parse(pairs, other_params, module)
    answer = await service.answer(spec, time.monotonic() - started, request.get(CLIENT))
    request[logs.MODE] = answer.mode.value
    headers = {"Cache-Status": cache_status(answer.mode)}
    if answer.mode.tailored:
        headers["Cache-Control"] = tailored_cache_control(settings, pinned)
        headers["X-Bundle-Mode"] = "tailored"
    else:
        # Short-lived and never immutable: the tailored bundle replaces it soon.
        short = f"public, max-age={settings.fallback_max_age_s}"
        headers.update(
            {"Cache-Control": short, "CDN-Cache-Control": short, "X-Bundle-Mode": "fallback"}
        )
    return answer, headers, spec


def cache_status(mode: Mode) -> str:
    """RFC 9211's Cache-Status, as CDNs write it: whether this answer came from the cache
    (a hit in any tier) or needed a build, and when it is not the tailored bundle, why
    (fallback, shed, limited). It is what lets a page's owner, or a benchmark, tell a
    hit from a rebuild without the server's logs."""
    if mode is Mode.HIT:
        return "bundler; hit"
    if mode is Mode.BUILT:
        return "bundler; fwd=miss; stored"
    if mode is Mode.CARRIED:  # another version's bundle, its inputs unchanged: no build
        return "bundler; fwd=miss; stored; detail=carried"
    return f"bundler; fwd=miss; detail={mode.value}"


async def handle_asset(request: web.Request) -> web.Response:
    """An image or font moved out of a bundle's CSS: its name is its content's hash."""
    version, name = request.match_info["version"], request.match_info["name"]
    data = await request.app[SERVICE].asset(version, name)
    return web.Response(
        body=data,
        headers={
            "Content-Type": css.ASSET_TYPES[name.rsplit(".", 1)[1]],
            "Cache-Control": IMMUTABLE,
            "X-Content-Type-Options": "nosniff",
        },
    )


def css_mode(pairs: list[tuple[str, str]]) -> bool:
    """``css=link`` (True) or ``css=inject``, the default (False); anything else is a 400."""
    values = [value for name, value in pairs if name == "css"]
    if len(values) > 1 or (values and values[0] not in ("inject", "link")):
        raise BadRequest(
            "css= is inject (the default: the bundle adds its modules' CSS to the page) or "
            "link (the page links /bundle.css with the same query), once"
        )
    return values == ["link"]


def tailored_cache_control(settings: Settings, pinned: bool) -> str:
    return IMMUTABLE if pinned else f"public, max-age={settings.default_version_max_age_s}"


async def handle_bundle_map(request: web.Request) -> web.Response:
    """The source map of the tailored bundle with the same query (never of a fallback)."""
    return await map_response(request, of_css=False)


async def handle_bundle_module_map(request: web.Request) -> web.Response:
    """The source map of the tailored module (/bundle.mjs) with the same query."""
    return await map_response(request, of_css=False, module=True)


async def map_response(request: web.Request, *, of_css: bool, module: bool = False) -> web.Response:
    """A tailored bundle's map (or its CSS's), cached like the bundle, with an ETag."""
    service = request.app[SERVICE]
    spec, pinned = await service.parse(list(request.query.items()), module=module)
    if of_css:
        name, made = f"css-map:{spec.key}", await service.css_source_map(spec)
    else:
        name, made = f"map:{spec.key}", await service.source_map(spec)
    document = await service.document(name, made)
    cache_control = tailored_cache_control(service.settings, pinned)
    return await bundle_response(request, document, {"Cache-Control": cache_control}, JSON_TYPE)


def web_asset(name: str) -> bytes:
    """The demo page and the loader ship inside the package (bundler/web/)."""
    return resources.files("bundler").joinpath("web", name).read_bytes()


def static_handler(name: str, content_type: str, cache_control: str) -> Handler:
    """A file of the package (the demo page, the loader), with an ETag and its brotli form
    made once, here."""
    document = Bundle.create(name, web_asset(name))

    async def handle(request: web.Request) -> web.Response:
        return await bundle_response(
            request, document, {"Cache-Control": cache_control}, content_type
        )

    return handle
