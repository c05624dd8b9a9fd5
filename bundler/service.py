"""The request path without HTTP: cache, then one shared build per key.

spec -> memory cache -> SingleFlight(key) -> source checkout -> esbuild -> Bundle
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from bundler.builder import Builder, BuildJob
from bundler.cache import Bundle, MemoryCache
from bundler.errors import BuildFailed, BundlerError, ConfigError, UnknownModule
from bundler.flight import SingleFlight
from bundler.settings import Settings
from bundler.sources import SourceStore
from bundler.spec import BuildOptions, BundleSpec, parse_query, validate_version

logger = logging.getLogger(__name__)

# Distinct failing combinations remembered at once; a storm of one broken
# combination costs one esbuild run per build_failure_ttl_s, not one per request.
MAX_REMEMBERED_FAILURES = 1024
# Backoff while the default version cannot be pulled at start (the pod stays unready).
STARTUP_RETRY_MIN_S = 1.0
STARTUP_RETRY_MAX_S = 30.0


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    builds: int = 0
    build_failures: int = 0


class BundleService:
    def __init__(
        self, settings: Settings, source: SourceStore, builder: Builder, cache: MemoryCache
    ) -> None:
        self.settings = settings
        self.source = source
        self.builder = builder
        self.cache = cache
        self.options = BuildOptions(
            target=settings.esbuild_target, registry_name=settings.registry_name
        )
        self.default_version = settings.default_version or self._newest_version()
        self.flight: SingleFlight[str, Bundle] = SingleFlight("build")
        self.failures: TTLCache[str, BundlerError] = TTLCache(
            maxsize=MAX_REMEMBERED_FAILURES, ttl=settings.build_failure_ttl_s
        )
        self.stats = Stats()
        self.ready = False
        self._startup: asyncio.Task[None] | None = None

    def _newest_version(self) -> str:
        newest = self.source.newest_version()
        if newest is None:
            raise ConfigError(
                f"no default version: set --default-version (source: {self.source.describe()})"
            )
        return newest

    async def start(self) -> None:
        """Local sources are checked now (a bad default version stops the start);
        remote ones are pulled in the background, and readiness waits for it."""
        try:
            validate_version(self.default_version)
        except BundlerError as exc:
            raise ConfigError(f"default version: {exc.message}") from None
        self.source.pin(self.default_version)
        await self.source.start()
        if self.source.remote:
            self._startup = asyncio.create_task(self._pull_default(), name="pull-default")
            return
        try:
            async with self.source.use(self.default_version):
                pass
        except BundlerError as exc:
            raise ConfigError(f"default version: {exc.message}") from None
        self.ready = True

    async def _pull_default(self) -> None:
        delay_s = STARTUP_RETRY_MIN_S
        while True:
            try:
                async with self.source.use(self.default_version):
                    break
            except BundlerError as exc:
                logger.error(
                    "cannot pull the default version; not ready",
                    extra={
                        "version": self.default_version,
                        "error": exc.message,
                        "retry_in_s": delay_s,
                    },
                )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, STARTUP_RETRY_MAX_S)
        self.ready = True
        logger.info("default version pulled; ready", extra={"version": self.default_version})

    def parse(self, pairs: Sequence[tuple[str, str]]) -> tuple[BundleSpec, bool]:
        return parse_query(
            pairs,
            default_version=self.default_version,
            options=self.options,
            max_modules=self.settings.max_modules,
            max_chars=self.settings.max_module_name_chars,
        )

    async def get(self, spec: BundleSpec) -> Bundle:
        bundle = self.cache.get(spec.key)
        if bundle is not None:
            self.stats.hits += 1
            return bundle
        self.stats.misses += 1
        failure = self.failures.get(spec.key)
        if failure is not None:
            raise failure
        return await self.flight.do(spec.key, lambda: self._build(spec))

    async def _build(self, spec: BundleSpec) -> Bundle:
        async with self.source.use(spec.version) as root:
            self.stats.builds += 1
            try:
                output = await self.builder.build(BuildJob.tailored(spec), root)
            except (BuildFailed, UnknownModule) as exc:
                self.stats.build_failures += 1
                self.failures[spec.key] = exc
                raise
        bundle = await asyncio.to_thread(Bundle.create, spec.key, output.code)
        self.cache.put(bundle)
        return bundle

    async def close(self) -> None:
        self.ready = False
        if self._startup is not None:
            self._startup.cancel()
        await self.flight.close()
        await self.builder.kill_all()
        await self.source.close()
