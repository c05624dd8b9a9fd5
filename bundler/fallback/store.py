"""One fallback per version, loaded or built once, ahead of every tailored build.

A fallback is usable as soon as esbuild has made it: it is served with quick compression
at first, while brotli 11 and the write to disk finish behind it. A large one is
published in two parts: the most wanted modules first, the rest when built.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache, TTLCache

from bundler.build.builder import Builder
from bundler.bundle import BROTLI_QUALITY_MAX
from bundler.errors import BuildFailed, BundlerError, UnknownModule
from bundler.fallback.build import build_fallback
from bundler.fallback.model import Fallback, FallbackBuild, Plan, identity
from bundler.fallback.ranking import OperatorList, reason_counts
from bundler.fallback.storage import (
    BUILT_FALLBACKS,
    MANIFEST,
    decode_shared,
    encode_shared,
    read_fallback,
    write_fallback,
)
from bundler.fleet.keys import fallback_name
from bundler.flight import SingleFlight
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import BuildOptions

if TYPE_CHECKING:
    from bundler.fleet import Fleet

logger = logging.getLogger(__name__)

# How long a version whose fallback failed to build is left without one before a request
# retries (the default version's start-up retries on its own backoff).
FAILURE_TTL_S = 30.0
# A fallback's brotli 11 waits for the builds to be done, checked this often, this long
# at most.
IDLE_POLL_S = 0.25
RECOMPRESS_MAX_WAIT_S = 30.0
# Names of modules left out that one log line lists (the manifest lists them all).
LOG_NAMES = 10


class Stage(enum.Enum):
    """Where a version's fallback is. NONE -> MAKING (ensure/get: loaded from disk or the
    fleet, or built) -> FIRST_PART (a large one: its most wanted modules are out, the rest
    coming) -> WHOLE; MAKING -> FAILED (remembered FAILURE_TTL_S, then NONE again: a
    request retries); FIRST_PART whose rest fails stays served as it is: WHOLE, with the
    rest left out. A version evicted from memory (max_versions) is NONE again."""

    NONE = "none"
    MAKING = "making"
    FIRST_PART = "first_part"
    WHOLE = "whole"
    FAILED = "failed"

    @property
    def usable(self) -> bool:
        return self in (Stage.FIRST_PART, Stage.WHOLE)


class FallbackStore:
    """Loads (or builds, ahead of tailored builds) one fallback per version, once.

    A fallback is usable as soon as esbuild has made it: it is served with quick
    compression at first, while brotli 11 and the write to disk finish behind it.
    Each version is in one Stage at a time (``stage``).
    """

    def __init__(
        self,
        static_dir: Path | None,
        data_dir: Path,
        builder: Builder,
        source: SourceStore,
        options: BuildOptions,
        max_versions: int,
        *,
        max_bytes: int,
        operator: OperatorList | None = None,
        popular: Callable[[], Sequence[str]] = tuple,
        fleet: Fleet,
    ) -> None:
        self.static_dir = static_dir
        self.built_dir = data_dir / BUILT_FALLBACKS
        self.builder = builder
        self.source = source
        self.options = options
        self.max_bytes = max_bytes
        self.operator = operator or OperatorList()
        self.popular = popular
        # A fallback one replica of a fleet built, the others take.
        self.fleet = fleet
        self._loaded: LRUCache[str, Fallback] = LRUCache(maxsize=max_versions)
        self._failures: TTLCache[str, BundlerError] = TTLCache(maxsize=64, ttl=FAILURE_TTL_S)
        self.flight: SingleFlight[str, Fallback | None] = SingleFlight("fallback")
        self._next_publish: dict[str, asyncio.Future[None]] = {}
        self._partial: set[str] = set()  # versions whose first part is out, the rest coming
        self._background: set[asyncio.Task[None]] = set()
        self._recompressing: set[asyncio.Task[None]] = set()
        # version -> part ("first", "all") -> seconds from its first need to its use
        self.ready_seconds: LRUCache[str, dict[str, float]] = LRUCache(maxsize=max_versions)
        self.builds = 0
        # The last whole fallback made ready: at a release, the old version's, which the
        # new version's first part starts from.
        self._last_whole: Fallback | None = None
        # Called the moment a fallback is loaded (the service reorders its queue then).
        self.on_loaded: Callable[[Fallback], None] | None = None

    def stage(self, version: str) -> Stage:
        if version in self._partial:
            return Stage.FIRST_PART
        if self._loaded.get(version) is not None:
            return Stage.WHOLE
        if version in self.flight:
            return Stage.MAKING
        return Stage.FAILED if version in self._failures else Stage.NONE

    def loaded(self, version: str) -> Fallback | None:
        return self._loaded.get(version)

    def failure(self, version: str) -> BundlerError | None:
        return self._failures.get(version)

    def __len__(self) -> int:
        return len(self._loaded)

    def all_loaded(self) -> list[Fallback]:
        return list(self._loaded.values())

    def plan(self, version: str) -> Plan:
        """Read on the loop: the popularity sketch is not safe to read from a thread."""
        previous = (
            self._last_whole if self._last_whole and self._last_whole.version != version else None
        )
        return Plan.make(version, self.max_bytes, self.operator, self.popular(), previous)

    def ensure(self, version: str) -> None:
        """Start loading or building the version's fallback unless it is under way; no wait."""
        if self._loaded.get(version) is None and version not in self._failures:
            self.flight.ensure(version, lambda: self._load_or_build(version))

    async def get(self, version: str, *, retry: bool = False) -> Fallback | None:
        """The version's fallback; None when it cannot be built (the request then waits
        for its tailored build). VersionNotFound and pull errors propagate.
        ``retry`` ignores a remembered failure."""
        fallback = self._loaded.get(version)
        if fallback is not None:
            return fallback
        if version in self._failures and not retry:
            return None
        return await self.flight.do(version, lambda: self._load_or_build(version))

    async def _load_or_build(self, version: str) -> Fallback | None:
        plan = self.plan(version)
        started = time.perf_counter()
        published: Fallback | None = None
        first_part: Fallback | None = None

        async def early(build: FallbackBuild) -> None:
            nonlocal first_part
            first_part = self._publish(await asyncio.to_thread(build.fallback), first_part=True)
            self._log_ready(first_part, time.perf_counter() - started, built=True, first_part=True)

        try:
            # The slot is claimed as soon as the source is there, ahead of the tailored
            # builds that waited for the same pull (a stored fallback gives it back at once).
            async with (
                self.source.use(version) as root,
                self.builder.holding(Priority.FALLBACK),
            ):
                # The version's digest (taken once per version, by the source): a stored
                # or shared fallback is used only for the exact source it was built from.
                digest = await self.source.digest(version)
                stored = await asyncio.to_thread(self._read_stored, version, plan, digest)
                if stored is None:
                    stored = await self._read_shared(version, plan, digest)
                if stored is not None:
                    build = stored
                else:
                    build = await build_fallback(
                        self.builder, root, version, self.options, plan, early
                    )
                    # Published before the slot passes on, so the queue can be
                    # reordered for it first (on_loaded).
                    published = self._publish(await asyncio.to_thread(build.fallback))
                    self.builds += 1
                    self._in_background(self._write(dataclass_replace(build, source_sha256=digest)))
        except (BuildFailed, UnknownModule) as exc:
            if first_part is not None:  # what the pages had keeps serving; not stored
                logger.error(
                    "fallback left at its first part",
                    extra={"version": version, "error": exc.summary()},
                )
                return first_part
            self._failures[version] = exc
            logger.error(
                "no fallback for this version",
                extra={"version": version, "error": exc.summary()},
            )
            return None
        finally:
            self._partial.discard(version)
            waiting = self._next_publish.pop(version, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        fallback = published or self._publish(await asyncio.to_thread(build.fallback))
        recompress = asyncio.create_task(self._recompress(build, fallback))
        self._recompressing.add(recompress)
        recompress.add_done_callback(self._recompressing.discard)
        self._log_ready(fallback, time.perf_counter() - started, built=stored is None)
        self._last_whole = fallback
        return fallback

    def published(self, version: str) -> asyncio.Future[None]:
        """Done when the version next has a fallback (its first part, or all of it), or
        its build ends without one."""
        future = self._next_publish.get(version)
        if future is None or future.done():
            future = self._next_publish[version] = asyncio.get_running_loop().create_future()
        return future

    def improving(self, version: str) -> asyncio.Future[None] | None:
        """Done when the version's fallback, served in a first part now, is complete (its
        next publication, or the build's end): a page its first part does not cover may
        find itself in the rest. None when no rest is coming."""
        return self.published(version) if self.stage(version) is Stage.FIRST_PART else None

    def _publish(self, fallback: Fallback, *, first_part: bool = False) -> Fallback:
        if first_part:
            self._partial.add(fallback.version)
        else:
            self._partial.discard(fallback.version)
        self._failures.pop(fallback.version, None)
        self._loaded[fallback.version] = fallback
        waiting = self._next_publish.pop(fallback.version, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if self.on_loaded is not None:
            self.on_loaded(fallback)
        return fallback

    def _read_stored(self, version: str, plan: Plan, digest: str) -> FallbackBuild | None:
        """A prebuilt or earlier-built fallback of this exact source."""
        dirs = [d / version for d in (self.static_dir, self.built_dir) if d is not None]
        dirs = [d for d in dirs if (d / MANIFEST).exists()]
        if not dirs:
            return None
        for directory in dirs:
            build = read_fallback(directory, version, self.options, digest, plan)
            if build is not None:
                return build
        return None

    def _log_ready(
        self, fallback: Fallback, seconds: float, *, built: bool, first_part: bool = False
    ) -> None:
        parts = self.ready_seconds.get(fallback.version) or {}
        parts["first" if first_part else "all"] = seconds
        parts.setdefault("first", seconds)
        self.ready_seconds[fallback.version] = parts
        failing = [
            name for name, why in fallback.left_out.items() if not why.startswith("over_budget")
        ]
        logger.info(
            "fallback's first part ready; the rest follows" if first_part else "fallback ready",
            extra={
                "version": fallback.version,
                "bytes": len(fallback.bundle.code),
                "modules": len(fallback.names),
                "left_out": reason_counts(fallback.left_out),
                "not_built": failing[:LOG_NAMES] + (["..."] if len(failing) > LOG_NAMES else []),
                "details": f"GET /fallback.json?v={fallback.version}",
                "built": built,
                "duration_ms": round(seconds * 1000),
            },
        )

    def _in_background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("fallback background work failed", extra={"error": repr(task.exception())})

    async def _recompress(self, build: FallbackBuild, quick: Fallback) -> None:
        """Brotli 11 (about 70 x slower than 5): a fallback is built once, served often.
        Not while builds wait: 0.5 s of a CPU for date-fns's fallback, which a release's
        backlog of tailored builds needs more (brotli 5 serves meanwhile)."""
        waited = 0.0
        while (self.builder.busy or self.builder.queued) and waited < RECOMPRESS_MAX_WAIT_S:
            await asyncio.sleep(IDLE_POLL_S)
            waited += IDLE_POLL_S
        best = await asyncio.to_thread(build.fallback, BROTLI_QUALITY_MAX)
        if self._loaded.get(build.version) is quick:
            self._loaded[build.version] = best

    async def _write(self, build: FallbackBuild) -> None:
        if self.fleet.shares:  # else a fleet of one: its encoding would be for nobody
            wanted = identity(
                build.version,
                self.options,
                build.source_sha256,
                build.max_bytes,
                build.operator_digest,
            )
            value = await asyncio.to_thread(encode_shared, build, self.options)
            await self.fleet.put_raw(fallback_name(wanted), value)
        await asyncio.to_thread(write_fallback, self.built_dir / build.version, self.options, build)

    async def _read_shared(self, version: str, plan: Plan, digest: str) -> FallbackBuild | None:
        """The fallback another replica built from this exact source, the same way."""
        wanted = identity(version, self.options, digest, plan.max_bytes, plan.operator_digest)
        raw = await self.fleet.get_raw(fallback_name(wanted))
        if raw is None:
            return None
        build = await asyncio.to_thread(decode_shared, raw, wanted, plan)
        if build is None:
            logger.error("corrupt shared fallback; rebuilt", extra={"version": version})
            await self.fleet.delete_raw(fallback_name(wanted))
            return None
        # Kept on this replica's disk too, as if built here (the first use does not wait).
        self._in_background(
            asyncio.to_thread(write_fallback, self.built_dir / version, self.options, build)
        )
        return build

    async def close(self) -> None:
        """Stops builds under way; lets the writes (and recompression) of built ones finish,
        so the next start finds them on disk."""
        await self.flight.close()
        for task in self._recompressing:  # memory only: nothing to keep
            task.cancel()
        await asyncio.gather(*self._background, *self._recompressing, return_exceptions=True)
