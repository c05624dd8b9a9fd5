"""The endpoints an operator and the warm-up use: probes, metrics, versions, the popular
combinations, POST /warm, and what a version's fallback holds."""

from __future__ import annotations

import asyncio
import hmac
import json
import re

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bundler.connections import error_response
from bundler.errors import BadRequest, BuildFailed, RequestTimeout, VersionNotFound
from bundler.handlers.bundles import JSON_TYPE, bundle_response
from bundler.keys import REGISTRY, SERVICE, SETTINGS
from bundler.spec import validate_version

DEFAULT_COMBOS = 100
MAX_COMBOS = 1000


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
    # The fleet's counts; this replica's without Redis, or when Redis is down.
    top = await service.fleet.top_combos(int(raw))
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
    """Build one combination for the warm-up: JSON {"version": V, "modules": [..]}, and
    "format": "esm" for the module form.

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
        form = body.get("format", "iife")
        if not isinstance(version, str) or not isinstance(modules, list):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError, AttributeError):
        raise BadRequest(
            'send JSON like {"version": "1.1.0", "modules": ["components/hero"]} (and '
            '"format": "esm" to warm /bundle.mjs)'
        ) from None
    if not all(isinstance(m, str) for m in modules):
        raise BadRequest("modules must be a list of strings")
    if form not in ("iife", "esm"):
        raise BadRequest('format is "iife" (/bundle.js, the default) or "esm" (/bundle.mjs)')
    pairs = [("modules", ",".join(modules)), ("v", version)]
    spec, _ = await service.parse(pairs, module=form == "esm")
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
