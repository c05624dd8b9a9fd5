"""create_app(settings): routes, the error middleware and resource lifetimes."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bundler.builder import Builder, check_esbuild
from bundler.cache import Bundle, MemoryCache
from bundler.errors import BundlerError, SourceUnavailable
from bundler.negotiate import choose_encoding
from bundler.service import BundleService
from bundler.settings import Settings
from bundler.sources import open_source

logger = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
SERVICE = web.AppKey("service", BundleService)

JS_CONTENT_TYPE = "application/javascript; charset=utf-8"
IMMUTABLE = "public, max-age=31536000, immutable"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=message + "\n",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors become their status and message; anything else a 500 with no traceback."""
    try:
        return await handler(request)
    except SourceUnavailable as exc:
        retry_after_s = math.ceil(max(1.0, request.app[SETTINGS].source_failure_ttl_s))
        return error_response(exc.status, exc.message, {"Retry-After": str(retry_after_s)})
    except BundlerError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("unhandled error", extra={"path": request.path_qs})
        return error_response(500, "internal error: the service logged the details")


def bundle_response(request: web.Request, bundle: Bundle, cache_control: str) -> web.Response:
    encoding = choose_encoding(request.headers.get("Accept-Encoding"))
    etag = bundle.etag(encoding)
    headers = {
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        "ETag": etag,
        "X-Bundle-Mode": "tailored",
    }
    candidates = request.if_none_match
    if candidates and any(c.value in ("*", etag.strip('"')) for c in candidates):
        return web.Response(status=304, headers=headers)
    body = bundle.code
    if encoding == "gzip":
        body = bundle.gzip
        headers["Content-Encoding"] = "gzip"
    headers["Content-Type"] = JS_CONTENT_TYPE
    return web.Response(body=body, headers=headers)


async def handle_bundle(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    spec, pinned = service.parse(list(request.query.items()))
    bundle = await service.get(spec)
    cache_control = (
        IMMUTABLE if pinned else f"public, max-age={service.settings.default_version_max_age_s}"
    )
    return bundle_response(request, bundle, cache_control)


async def handle_healthz(request: web.Request) -> web.Response:
    """Liveness: the loop answered. Nothing else is checked, on purpose."""
    return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})


async def handle_readyz(request: web.Request) -> web.Response:
    if request.app[SERVICE].ready:
        return web.Response(text="ready\n", headers={"Cache-Control": "no-store"})
    return error_response(503, "not ready")


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    await service.start()
    logger.info(
        "service ready",
        extra={
            "url": f"http://{service.settings.host}:{service.settings.port}",
            "default_version": service.default_version,
            "source": service.source.describe(),
            "pool_size": service.builder.pool_size,
            "threads_per_build": service.builder.threads_per_build,
        },
    )
    yield
    await service.close()


def create_app(settings: Settings) -> web.Application:
    """Builds the service; raises ConfigError (one line) when a setting cannot work."""
    esbuild = check_esbuild(settings.esbuild)
    source = open_source(settings)
    builder = Builder(
        esbuild,
        Path(settings.data_dir).resolve() / "tmp",
        pool_size=settings.pool_size,
        threads_per_build=settings.threads_per_build,
        timeout_s=settings.build_timeout_s,
        niceness=settings.build_niceness,
    )
    service = BundleService(settings, source, builder, MemoryCache(settings.memory_cache_max_bytes))

    app = web.Application(middlewares=[errors_middleware])
    app[SETTINGS] = settings
    app[SERVICE] = service
    app.router.add_get("/bundle.js", handle_bundle)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.cleanup_ctx.append(service_ctx)
    return app
