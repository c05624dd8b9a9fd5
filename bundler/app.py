"""create_app(settings): routes, the error middleware and resource lifetimes."""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from bundler import css, logs
from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob
from bundler.cache import Bundle, MemoryCache
from bundler.combos import COMBOS_FILE, PopularCombos
from bundler.connections import ConnectionStats, error_response
from bundler.disk import DiskCache
from bundler.errors import (
    BadRequest,
    BuildFailed,
    BundlerError,
    RequestTimeout,
    Unavailable,
    VersionNotFound,
    one_line,
)
from bundler.fallback.ranking import OperatorList
from bundler.fallback.store import FallbackStore
from bundler.metrics import LagMonitor, ServiceCollector, Watchdog, build_histogram
from bundler.negotiate import choose_encoding
from bundler.service.core import BundleService
from bundler.service.race import Answer
from bundler.settings import Settings
from bundler.slots import Priority
from bundler.sources import open_source
from bundler.spec import BundleSpec, validate_version

logger = logging.getLogger(__name__)


class InFlight:
    """Requests being handled now; the shutdown waits for them, up to its timeout."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()


SETTINGS = web.AppKey("settings", Settings)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
SERVICE = web.AppKey("service", BundleService)
REGISTRY = web.AppKey("registry", CollectorRegistry)
CONNECTIONS = web.AppKey("connections", ConnectionStats)

JS_CONTENT_TYPE = "application/javascript; charset=utf-8"
CSS_CONTENT_TYPE = "text/css; charset=utf-8"
JSON_TYPE = "application/json"
DEFAULT_COMBOS = 100
MAX_COMBOS = 1000
IMMUTABLE = "public, max-age=31536000, immutable"
ALLOW = "GET, HEAD, POST"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts requests in flight (the shutdown waits for them); domain errors become their
    status and message; anything else a 500 with no traceback. One middleware, not two:
    each costs a coroutine layer on every warm hit."""
    if request.method == "CONNECT":  # its target is host:port, no path: no route
        return error_response(405, "CONNECT is not served: this is not a proxy", {"Allow": ALLOW})
    in_flight = request.app[IN_FLIGHT]
    in_flight.count += 1
    in_flight.idle.clear()
    try:
        return await handler(request)
    except BundlerError as exc:
        if request.path == "/bundle.js":
            request.app[SERVICE].requests["error"] += 1
        headers = {}
        if isinstance(exc, Unavailable):
            retry_after_s = math.ceil(max(1.0, request.app[SETTINGS].source_failure_ttl_s))
            headers["Retry-After"] = str(retry_after_s)
        return error_response(exc.status, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # The framework's own (unknown path, wrong method, body too large): one line,
        # never cached, its headers (Allow) kept.
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        return error_response(exc.status, one_line(exc.text or exc.reason), kept)
    except Exception:
        logger.exception("unhandled error", extra={"path": request.path_qs})
        return error_response(500, "internal error: the service logged the details")
    finally:
        in_flight.count -= 1
        if in_flight.count == 0:
            in_flight.idle.set()


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
    pairs = list(request.query.items())
    link = css_mode(pairs)
    answer, headers, _ = await answer_bundle(request, pairs, frozenset({"css"}))
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
    service = request.app[SERVICE]
    spec, pinned = await service.parse(list(request.query.items()))
    document = await service.document(f"css-map:{spec.key}", await service.css_source_map(spec))
    cache_control = tailored_cache_control(service.settings, pinned)
    return await bundle_response(request, document, {"Cache-Control": cache_control}, JSON_TYPE)


async def answer_bundle(
    request: web.Request,
    pairs: list[tuple[str, str]],
    other_params: frozenset[str] = frozenset(),
) -> tuple[Answer, dict[str, str], BundleSpec]:
    service = request.app[SERVICE]
    settings = service.settings
    started = time.monotonic()
    spec, pinned = await service.parse(pairs, other_params)
    answer = await service.answer(spec, time.monotonic() - started)
    request[logs.MODE] = answer.mode.value
    if answer.mode.tailored:
        headers = {
            "Cache-Control": tailored_cache_control(settings, pinned),
            "X-Bundle-Mode": "tailored",
        }
    else:
        # Short-lived and never immutable: the tailored bundle replaces it soon.
        short = f"public, max-age={settings.fallback_max_age_s}"
        headers = {"Cache-Control": short, "CDN-Cache-Control": short, "X-Bundle-Mode": "fallback"}
    return answer, headers, spec


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
    service = request.app[SERVICE]
    spec, pinned = await service.parse(list(request.query.items()))
    document = await service.document(f"map:{spec.key}", await service.source_map(spec))
    cache_control = tailored_cache_control(service.settings, pinned)
    return await bundle_response(request, document, {"Cache-Control": cache_control}, JSON_TYPE)


def single_params(request: web.Request, allowed: set[str], usage: str) -> dict[str, str]:
    """The query as one value per name; an unknown or repeated name is a 400 saying ``usage``."""
    names = [name for name, _ in request.query.items()]
    if set(names) - allowed or len(names) != len(set(names)):
        raise BadRequest(f"use {usage}")
    return dict(request.query.items())


async def handle_combos(request: web.Request) -> web.Response:
    """The most requested module lists (versionless), for the warm-up."""
    usage = f"/combos?top=N with N from 1 to {MAX_COMBOS}"
    raw = single_params(request, {"top"}, usage).get("top", str(DEFAULT_COMBOS))
    # ASCII digits only: "²".isdigit() is True, and int("²") fails.
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= MAX_COMBOS:
        raise BadRequest(f"use {usage}")
    service = request.app[SERVICE]
    top = None
    if service.shared is not None:  # the fleet's counts; this replica's when Redis is down
        top = await service.shared.top_combos(int(raw))
    return web.json_response(
        {"combos": top if top is not None else service.combos.top(int(raw))},
        headers={"Cache-Control": "no-store"},
    )


async def handle_versions(request: web.Request) -> web.Response:
    """The versions the source offers (an npm registry's list, a directory's subdirectories,
    or what a tarball source has pulled), and the default one."""
    single_params(request, set(), "/versions with no parameters")
    service = request.app[SERVICE]
    return web.json_response(
        {"default": service.default_version, "versions": await service.source.versions()},
        headers={"Cache-Control": "no-store"},
    )


async def handle_warm(request: web.Request) -> web.Response:
    """Build one combination for the warm-up: JSON {"version": V, "modules": [..]}.

    It answers when the bundle is cached (never with the fallback), and builds at
    the lowest priority, so warming never delays a page.
    """
    service = request.app[SERVICE]
    token = service.settings.warm_token
    given = request.headers.get("X-Warm-Token", "").encode("utf-8", "surrogateescape")
    if token and not hmac.compare_digest(given, token.encode()):  # bytes: any header compares
        return error_response(403, "POST /warm needs the right X-Warm-Token header")
    try:
        # The bytes, not request.json(): a bogus charset parameter must not matter, and
        # json.loads finds UTF-8/16/32 itself. Deep nesting is a RecursionError.
        body = json.loads(await read_body(request))
        version, modules = body["version"], body["modules"]
        if not isinstance(version, str) or not isinstance(modules, list):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):
        raise BadRequest(
            'send JSON like {"version": "1.1.0", "modules": ["components/hero"]}'
        ) from None
    if not all(isinstance(m, str) for m in modules):
        raise BadRequest("modules must be a list of strings")
    spec, _ = await service.parse([("modules", ",".join(modules)), ("v", version)])
    outcome = await service.warm(spec)
    return web.json_response({"status": outcome, "query": spec.query})


async def read_body(request: web.Request) -> bytes:
    """The request's body, within body_timeout_s: a client that announces more than it
    sends is answered, and its connection closed, instead of being waited for."""
    timeout_s = request.app[SETTINGS].body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


async def handle_fallback_info(request: web.Request) -> web.Response:
    """What a version's fallback holds and what it left out, and why (built if need be)."""
    service = request.app[SERVICE]
    query = single_params(request, {"v"}, "/fallback.json?v=VERSION")
    version = validate_version(query.get("v", service.default_version))
    fallback = await service.fallbacks.get(version)
    if fallback is None:
        failure = service.fallbacks.failure(version)
        reason = failure.summary() if failure else "it could not be built"
        raise BuildFailed(f"version {version} has no fallback: {reason}")
    return web.json_response(
        {**fallback.summary(), "names": sorted(fallback.names), "left_out": fallback.left_out},
        headers={"Cache-Control": "no-store"},
    )


async def handle_fallback_map(request: web.Request) -> web.Response:
    """The source map of a version's fallback (the fallback's sourceMappingURL)."""
    service = request.app[SERVICE]
    query = single_params(request, {"v"}, "/fallback.js.map?v=VERSION")
    version = validate_version(query.get("v", service.default_version))
    fallback = await service.fallbacks.get(version)
    if fallback is None or fallback.bundle.sourcemap is None:
        raise VersionNotFound(f"no fallback for version {version!r}")
    name = f"fallback-map:{version}:{fallback.bundle.digest}"
    document = await service.document(name, fallback.bundle.sourcemap)
    return await bundle_response(
        request, document, {"Cache-Control": "public, max-age=300"}, JSON_TYPE
    )


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


async def hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp names itself and Python's version in Server: nothing a client needs."""
    response.headers["Server"] = "bundler"


async def handle_expect(request: web.Request) -> web.Response | None:
    """aiohttp's own answer to an unknown Expect: echoes the value (a 500 when it is not
    UTF-8) in a page of its own: here, "100-continue" or a one-line 417."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        return error_response(417, "the only Expect this service takes is 100-continue")
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer's size
    return None


async def handle_healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answered. Nothing else is checked, on purpose."""
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def handle_readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    degraded = service.degraded
    detail = f"degraded: {degraded}\n" if degraded else ""
    if service.ready:
        return web.Response(text="ready\n" + detail, headers={"Cache-Control": "no-store"})
    reason = "draining" if service.draining else "the default version's fallback is not loaded yet"
    return error_response(503, f"not ready: {reason}" + (f"; {detail.strip()}" if detail else ""))


async def handle_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    settings = app[SETTINGS]
    await service.start()
    service.lag.start()
    watchdog = Watchdog(service.lag, stall_s=settings.watchdog_stall_s)
    watchdog.start()
    logger.info(
        "service started",
        extra={
            "url": f"http://{settings.host}:{settings.port}",
            "default_version": service.default_version,
            "source": service.source.describe(),
            "pool_size": service.builder.pool_size,
            "threads_per_build": service.builder.threads_per_build,
        },
    )
    yield
    await service.close()
    watchdog.stop()
    await service.lag.stop()


def create_app(settings: Settings) -> web.Application:
    """Builds the service; raises ConfigError (one line) when a setting cannot work."""
    builder = Builder.from_settings(settings)
    source = open_source(settings)
    data_dir = Path(settings.data_dir).resolve()
    registry = CollectorRegistry()
    durations = build_histogram(registry)

    def observe(job: BuildJob, seconds: float, result: str) -> None:
        kind = "tailored" if job.priority == Priority.UNCOVERED else job.priority.name.lower()
        durations.labels(kind=kind).observe(seconds)

    builder.on_finish = observe
    options = BundleService.options_from(settings)
    combos = PopularCombos(data_dir / COMBOS_FILE, settings.combos_top_k)
    fallbacks = FallbackStore(
        settings.static_fallback_dir,
        data_dir,
        builder,
        source,
        options,
        max_versions=settings.source_keep_versions + 1,
        max_bytes=settings.fallback_max_bytes,
        operator=OperatorList.load(settings.fallback_modules),
        popular=combos.popular_modules,
    )
    service = BundleService(
        settings,
        source,
        builder,
        MemoryCache(settings.memory_cache_max_bytes),
        DiskCache(
            data_dir / "cache", settings.disk_cache_max_bytes, settings.disk_cache_min_free_bytes
        ),
        combos,
        fallbacks,
        LagMonitor(registry),
    )
    connections = ConnectionStats()  # filled by the server's connections (bundler.cli)
    registry.register(
        ServiceCollector(lambda: {**service.metric_values(), **connections.metric_values()})
    )

    app = web.Application(middlewares=[request_middleware])
    app[IN_FLIGHT] = InFlight()
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[REGISTRY] = registry
    app[CONNECTIONS] = connections
    get = functools.partial(app.router.add_get, expect_handler=handle_expect)
    get("/bundle.js", handle_bundle)
    get("/bundle.js.map", handle_bundle_map)
    get("/bundle.css", handle_bundle_css)
    get("/bundle.css.map", handle_bundle_css_map)
    get("/assets/{version}/{name}", handle_asset)
    get("/fallback.js.map", handle_fallback_map)
    get("/fallback.json", handle_fallback_info)
    get("/combos", handle_combos)
    get("/versions", handle_versions)
    app.router.add_post("/warm", handle_warm, expect_handler=handle_expect)
    get(
        "/",
        static_handler("index.html", "text/html; charset=utf-8", "no-cache"),
    )
    # Unversioned, so cached briefly; it is small and changes rarely.
    get(
        "/loader.js",
        static_handler("loader.js", JS_CONTENT_TYPE, "public, max-age=300"),
    )
    get("/healthz", handle_healthz)
    get("/readyz", handle_readyz)
    get("/metrics", handle_metrics)
    app.on_response_prepare.append(hide_server_version)
    app.cleanup_ctx.append(service_ctx)
    return app
