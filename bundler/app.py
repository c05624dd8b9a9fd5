"""create_app(settings): the parts wired together, the routes, the one middleware, and
the resource lifetimes."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import HttpVersion11, web
from prometheus_client import CollectorRegistry

from bundler import cors
from bundler.build.jobs import BuildJob
from bundler.components import make_components, make_fleet
from bundler.connections import ConnectionStats, error_response
from bundler.errors import BundlerError, TooManyRequests, Unavailable, one_line
from bundler.handlers import bundles, operations, status
from bundler.keys import (
    ANSWERED,
    CLIENT,
    CONNECTIONS,
    IN_FLIGHT,
    REGISTRY,
    SERVICE,
    SETTINGS,
    STATUS,
    InFlight,
)
from bundler.metrics import (
    LagMonitor,
    ServiceCollector,
    Watchdog,
    answer_histogram,
    build_histogram,
)
from bundler.service.core import BundleService
from bundler.service.figures import version_figures
from bundler.settings import Settings
from bundler.slots import Priority
from bundler.status import StatusBoard

logger = logging.getLogger(__name__)

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
    started = time.monotonic()
    try:
        if request.path in LIMITED_PATHS or request.path.startswith("/assets/"):
            await limit_request(request)
        response = await handler(request)
        if request.path in TIMED_PATHS and response.status < 400:
            request.app[ANSWERED](time.monotonic() - started)
        return response
    except BundlerError as exc:
        if request.path in ("/bundle.js", "/bundle.mjs"):
            request.app[SERVICE].requests["error"] += 1
        headers = {}
        if isinstance(exc, TooManyRequests):
            headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
        elif isinstance(exc, Unavailable):
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


# How long a 429 past the request rate is held before it is sent.
TARPIT_S = 1.0
# A page's bundle answers, timed (bundler_answer_seconds, the status page's TTFB).
TIMED_PATHS = frozenset({"/bundle.js", "/bundle.mjs", "/bundle.css"})
# What a client's request rate counts: what pages ask for (probes, metrics, /warm never).
LIMITED_PATHS = frozenset(
    {
        "/bundle.js",
        "/bundle.js.map",
        "/bundle.mjs",
        "/bundle.mjs.map",
        "/bundle.css",
        "/bundle.css.map",
    }
)


async def limit_request(request: web.Request) -> None:
    """Who asks (bundler.clients), kept for the build budget; past its request rate, a 429
    held TARPIT_S: a client that asks again as soon as it is answered gets one answer a
    second per connection, so a refused flood costs a timer per connection rather than
    thousands of answers a second (bench_flood, 32 connections: 6,569 429s a second
    unheld, 3,062 held until the next token, about 32 held TARPIT_S)."""
    service = request.app[SERVICE]
    client = service.clients.of(request.remote, request.headers)
    request[CLIENT] = client
    wait_s = service.limits.request(client)
    if wait_s:
        await asyncio.sleep(TARPIT_S)
        raise TooManyRequests(
            f"too many requests from {client}: at most "
            f"{service.settings.client_requests_per_s:g} a second; retry after the "
            "Retry-After seconds",
            wait_s,
        )


async def prepare_headers(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp names itself and Python's version in Server: nothing a client needs. What
    pages load gets its CORS headers (bundler.cors), error answers included, so a page on
    another origin can read why."""
    response.headers["Server"] = "bundler"
    cors.allow(request.app[SETTINGS].cors_origins, request, response)


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


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    settings = app[SETTINGS]
    await service.start()
    service.lag.start()
    app[STATUS].start()
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
    await app[STATUS].close()
    await service.close()
    watchdog.stop()
    await service.lag.stop()


def create_app(settings: Settings) -> web.Application:
    """Builds the service; raises ConfigError (one line) when a setting cannot work."""
    registry = CollectorRegistry()
    lag = LagMonitor(registry)
    parts = make_components(settings, fleet=make_fleet(settings, lambda: lag.smoothed_s))
    durations = build_histogram(registry)

    def observe(job: BuildJob, seconds: float, result: str) -> None:
        kind = "tailored" if job.priority == Priority.UNCOVERED else job.priority.name.lower()
        durations.labels(kind=kind).observe(seconds)

    parts.builder.on_finish = observe
    service = BundleService(parts, lag)
    connections = ConnectionStats()  # filled by the server's connections (bundler.cli)

    def figures() -> dict[str, float | dict[str, float]]:
        """What /metrics shows and the status board samples: one source for both."""
        return {**service.metric_values(), **connections.metric_values()}

    registry.register(ServiceCollector(figures))
    board = StatusBoard(figures, lambda: version_figures(service))
    answers = answer_histogram(registry)

    def answered(seconds: float) -> None:
        answers.observe(seconds)
        board.observe(seconds)

    app = web.Application(middlewares=[request_middleware])
    app[IN_FLIGHT] = InFlight()
    app[SETTINGS] = settings
    app[SERVICE] = service
    app[REGISTRY] = registry
    app[CONNECTIONS] = connections
    app[STATUS] = board
    app[ANSWERED] = answered
    get = functools.partial(app.router.add_get, expect_handler=handle_expect)
    get("/bundle.js", bundles.handle_bundle)
    get("/bundle.js.map", bundles.handle_bundle_map)
    get("/bundle.mjs", bundles.handle_bundle_module)
    get("/bundle.mjs.map", bundles.handle_bundle_module_map)
    get("/bundle.css", bundles.handle_bundle_css)
    get("/bundle.css.map", bundles.handle_bundle_css_map)
    get("/assets/{version}/{name}", bundles.handle_asset)
    get("/fallback.js.map", operations.handle_fallback_map)
    get("/fallback.json", operations.handle_fallback_info)
    get("/combos", operations.handle_combos)
    get("/versions", operations.handle_versions)
    app.router.add_post("/warm", operations.handle_warm, expect_handler=handle_expect)
    get(
        "/",
        bundles.static_handler("index.html", "text/html; charset=utf-8", "no-cache"),
    )
    # Unversioned, so cached briefly; it is small and changes rarely.
    get(
        "/loader.js",
        bundles.static_handler("loader.js", bundles.JS_CONTENT_TYPE, "public, max-age=300"),
    )
    get(
        "/loader.mjs",
        bundles.static_handler("loader.mjs", bundles.JS_CONTENT_TYPE, "public, max-age=300"),
    )
    get("/status", status.handle_status)
    get("/status.js", bundles.static_handler("status.js", bundles.JS_CONTENT_TYPE, "no-cache"))
    get("/status.json", status.handle_status_json)
    get("/healthz", operations.handle_healthz)
    get("/readyz", operations.handle_readyz)
    get("/metrics", operations.handle_metrics)
    app.on_response_prepare.append(prepare_headers)
    app.cleanup_ctx.append(service_ctx)
    return app
