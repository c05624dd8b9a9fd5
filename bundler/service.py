"""The request path without HTTP.

spec -> memory cache -> disk cache -> shed? -> SingleFlight(key) build, waited for up
to the fallback budget -> the tailored bundle, or the version's fallback while the
build fills the cache. Nobody waits on a fallback build: a version whose fallback is
not ready yet starts it (once, ahead of all tailored builds) and the request takes
whichever comes first after its budget, its own bundle or the fallback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache, TTLCache

from bundler import css
from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, BuildOutput
from bundler.cache import Bundle, MemoryCache, gzip_body
from bundler.combos import PopularCombos
from bundler.disk import DiskCache
from bundler.errors import (
    BuildFailed,
    BundlerError,
    ConfigError,
    DiskFault,
    NotFound,
    Overloaded,
    Unavailable,
    UnknownModule,
    one_line,
)
from bundler.fallback.model import Fallback
from bundler.fallback.ranking import reason_counts
from bundler.fallback.store import FallbackStore
from bundler.flight import SingleFlight
from bundler.metrics import LagMonitor
from bundler.resolve import resolve_modules
from bundler.settings import Settings
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import BuildOptions, BundleSpec, parse_query, validate_version

if TYPE_CHECKING:  # redis-py is imported only where Redis is configured (7 MiB of RSS)
    from bundler.shared import Lease, SharedTier

logger = logging.getLogger(__name__)

# Distinct failing combinations remembered at once; a storm of one broken
# combination costs one esbuild run per build_failure_ttl_s, not one per request.
MAX_REMEMBERED_FAILURES = 1024
# Combinations answered with the fallback without a build (shed), remembered to be built
# later, at warm-up priority, when the queue has room: most recently asked first.
MAX_DEFERRED = 1024
# Bundles' CSS-less JavaScript and stylesheets (css=link, /bundle.css), at most.
VARIANTS_MAX_BYTES = 8 * 1024 * 1024
# gzip forms, made on the first request that asks for one (browsers ask for brotli).
GZIPPED_MAX_BYTES = 16 * 1024 * 1024
# The maps LRU holds a bundle's CSS map under its key with this suffix.
CSS_MAP_SUFFIX = ":css"
# Parsed queries kept (a spec and its cache key), by the query as sent.
PARSED_QUERIES = 4096
# How often an unwritable data dir is looked at again (readiness follows it).
DATA_DIR_RECHECK_S = 5.0
# Source maps built on request (developers with devtools open), kept in memory.
MAP_CACHE_BYTES = 32 * 1024 * 1024
# Backoff while the default version's fallback cannot be prepared (the pod stays unready).
STARTUP_RETRY_MIN_S = 1.0
STARTUP_RETRY_MAX_S = 30.0


class Mode(enum.Enum):
    HIT = "hit"  # tailored, from the cache
    BUILT = "built"  # tailored, built within the fallback budget
    FALLBACK = "fallback"  # the build did not finish within the budget; it goes on
    SHED = "shed"  # queue full or loop lagging: the fallback, and no build

    @property
    def tailored(self) -> bool:
        return self in (Mode.HIT, Mode.BUILT)


@dataclass(frozen=True)
class Answer:
    bundle: Bundle
    mode: Mode


async def build_output(
    source: SourceStore, builder: Builder, spec: BundleSpec, priority: Priority, *, with_map: bool
) -> BuildOutput:
    async with source.use(spec.version) as root:
        registrations = resolve_modules(root, spec.version, spec.modules)
        job = BuildJob.tailored(spec, registrations, priority, with_map=with_map)
        return await builder.build(job, root)


async def build_bundle(
    source: SourceStore, builder: Builder, spec: BundleSpec, priority: Priority
) -> Bundle:
    """Build one tailored bundle (no source map: it is made on request) and its compressed forms."""
    output = await build_output(source, builder, spec, priority, with_map=False)
    return await asyncio.to_thread(Bundle.create, spec.key, output.code)


def _derive(bundle: Bundle, kind: str, map_url: str | None) -> Bundle:
    split = css.split_injected(bundle.code)
    if split is None:  # no CSS: the JavaScript as it is, and an empty stylesheet
        if kind == "js":
            return bundle
        code = b""
    elif kind == "js":
        code = split[0]
    else:  # it names its moved-out assets relative to itself already
        code = split[1]
        if map_url:
            code += f"/*# sourceMappingURL={map_url} */\n".encode()
    return Bundle.create(f"{bundle.key}:{kind}", code, etag_prefix=bundle.etag_prefix)


class BundleService:
    def __init__(
        self,
        settings: Settings,
        source: SourceStore,
        builder: Builder,
        cache: MemoryCache,
        disk: DiskCache,
        combos: PopularCombos,
        fallbacks: FallbackStore,
        lag: LagMonitor,
    ) -> None:
        self.settings = settings
        self.source = source
        self.builder = builder
        self.cache = cache
        self.disk = disk
        self.combos = combos
        self.fallbacks = fallbacks
        self.lag = lag
        self.options = fallbacks.options
        self.default_version = settings.default_version or self._newest_version()
        self.flight: SingleFlight[str, Bundle] = SingleFlight(
            "build", stagger=settings.flight_release == "staggered"
        )
        self.failures: TTLCache[str, BundlerError] = TTLCache(
            maxsize=MAX_REMEMBERED_FAILURES, ttl=settings.build_failure_ttl_s
        )
        self.requests: collections.Counter[str] = collections.Counter()
        self.lookups: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._startup: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._disk_writes: set[asyncio.Task[None]] = set()
        self.disk_failing = False
        self.data_dir_problem: str | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.maps: LRUCache[str, bytes] = LRUCache(maxsize=MAP_CACHE_BYTES, getsizeof=len)
        self.map_flight: SingleFlight[str, bytes] = SingleFlight("source-map")
        self.deferred: collections.OrderedDict[str, BundleSpec] = collections.OrderedDict()
        self._deferred_running: set[str] = set()
        self._room = asyncio.Event()  # set whenever a build finishes
        self._drainer: asyncio.Task[None] | None = None
        self._variants: LRUCache[tuple[str, str, str, str | None], Bundle] = LRUCache(
            maxsize=VARIANTS_MAX_BYTES, getsizeof=lambda b: b.size
        )
        self._gzipped: LRUCache[tuple[str, str], bytes] = LRUCache(
            maxsize=GZIPPED_MAX_BYTES, getsizeof=len
        )
        self._gzipping: SingleFlight[tuple[str, str], bytes] = SingleFlight("gzip")
        # Source maps as served (an ETag and a brotli form each), by name.
        self._documents: LRUCache[str, Bundle] = LRUCache(
            maxsize=MAP_CACHE_BYTES, getsizeof=lambda b: b.size
        )
        self._parsed: LRUCache[tuple[Any, ...], tuple[BundleSpec, bool]] = LRUCache(
            maxsize=PARSED_QUERIES
        )
        fallbacks.on_loaded = self._promote_uncovered
        self.shared: SharedTier | None = None
        if settings.redis_url:
            from bundler.shared import SharedTier

            self.shared = SharedTier(
                settings.redis_url,
                timeout_s=settings.redis_timeout_ms / 1000,
                ttl_s=settings.redis_ttl_s,
                prefix=settings.redis_key_prefix,
                lag=lambda: self.lag.smoothed_s,
            )
            fallbacks.shared = self.shared
        self.lease_waits = 0
        # Shared-tier writes and lease releases under way, by name ("shared-write:<key>").
        self._shared_writes: dict[str, asyncio.Task[None]] = {}

    @staticmethod
    def options_from(settings: Settings) -> BuildOptions:
        return BuildOptions(
            target=settings.esbuild_target,
            registry_name=settings.registry_name,
            asset_inline_max_bytes=settings.asset_inline_max_bytes,
        )

    def _newest_version(self) -> str:
        newest = self.source.newest_version()
        if newest is None:
            raise ConfigError(
                f"no default version: set --default-version (source: {self.source.describe()})"
            )
        return newest

    @property
    def ready(self) -> bool:
        """Every bundle request can be answered now: the default fallback is loaded and
        the process is not draining. A broken disk does not count: with the fallback
        loaded, a pod serves as well on it as without it (from memory, and the fallback
        for what it cannot build), whether the disk broke before its start or after."""
        return not self.draining and self.fallbacks.loaded(self.default_version) is not None

    @property
    def degraded(self) -> str | None:
        """What is wrong but does not stop the pod serving (/readyz says it)."""
        if self.data_dir_problem is not None:
            return self.data_dir_problem
        if self.disk_failing:
            return "the disk cache's writes fail (full or read-only data dir)"
        return None

    def _check_data_dir(self) -> None:
        """Writes and removes a file under the data dir (in a thread)."""
        scratch = self.builder.scratch_dir
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            probe = scratch / f".probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            problem = f"the data dir cannot be written: {exc.strerror or exc}"
            if problem != self.data_dir_problem:
                logger.error(
                    "data dir cannot be written; serving from memory and the fallback",
                    extra={"error": problem},
                )
            self.data_dir_problem = problem
            return
        if self.data_dir_problem is not None:
            logger.info("the data dir can be written again")
        self.data_dir_problem = None

    async def _watch_data_dir(self) -> None:
        """Until the data dir can be written, look again every few seconds."""
        while self.data_dir_problem is not None:
            await asyncio.sleep(DATA_DIR_RECHECK_S)
            await asyncio.to_thread(self._check_data_dir)

    async def start(self) -> None:
        """A local source's default version is checked now (a wrong one stops the start);
        its fallback is loaded, or built, in the background: /readyz waits for it."""
        await asyncio.to_thread(self._check_data_dir)
        if self.data_dir_problem is not None:
            self._watcher = asyncio.create_task(self._watch_data_dir(), name="watch-data-dir")
        else:
            removed = await asyncio.to_thread(self.builder.clean_scratch)
            if removed:
                logger.info("removed stale build scratch dirs", extra={"count": removed})
        try:
            validate_version(self.default_version)
        except BundlerError as exc:
            raise ConfigError(f"default version: {exc.message}") from None
        self.source.pin(self.default_version)
        await self.source.start()
        if not self.source.remote:
            try:
                async with self.source.use(self.default_version):
                    pass
            except BundlerError as exc:
                raise ConfigError(f"default version: {exc.message}") from None
        await self.disk.start()
        await asyncio.to_thread(self.combos.load)
        self._saver = asyncio.create_task(
            self.combos.save_every(self.settings.combos_save_interval_s), name="save-combos"
        )
        self._startup = asyncio.create_task(self._prepare_default(), name="prepare-default")
        if self.shared is not None:
            await self.shared.start()  # never fails the start: Redis may come later

    async def _prepare_default(self) -> None:
        delay_s = STARTUP_RETRY_MIN_S
        while True:
            try:
                if await self.fallbacks.get(self.default_version, retry=True) is not None:
                    break
                failure = self.fallbacks.failure(self.default_version)
                problem = failure.message if failure else "its fallback could not be built"
            except BundlerError as exc:
                problem = exc.message
            logger.error(
                "default version not servable yet; not ready",
                extra={
                    "version": self.default_version,
                    "error": one_line(problem),
                    "retry_in_s": delay_s,
                },
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, STARTUP_RETRY_MAX_S)
        logger.info("ready", extra={"default_version": self.default_version})

    async def parse(
        self, pairs: Sequence[tuple[str, str]], other_params: frozenset[str] = frozenset()
    ) -> tuple[BundleSpec, bool]:
        """The request's spec, bound to its version's content (its digest, taken once per
        version: for a version not pulled yet, after its pull). A warm hit's query is
        usually one seen before: its spec (with its cache key, JSON and SHA-256) comes from
        a small LRU, not made again."""
        memo_key = (tuple(pairs), self.default_version)
        parsed = self._parsed.get(memo_key)
        if parsed is not None and parsed[0].content == self.source.known_digest(parsed[0].version):
            return parsed
        spec, pinned = parse_query(
            pairs,
            default_version=self.default_version,
            options=self.options,
            max_modules=self.settings.max_modules,
            max_chars=self.settings.max_module_name_chars,
            other_params=other_params,
        )
        content = await self.source.digest(spec.version)
        parsed = dataclasses.replace(spec, content=content), pinned
        self._parsed[memo_key] = parsed
        return parsed

    def _queue_full(self) -> bool:
        """Tailored builds admitted (running, queued, or created but not yet queued: a
        burst parsed in one loop iteration admits all of it before any build task runs);
        deferred builds run in the room left and never count against a page."""
        limit = self.settings.queue_max
        admitted = len(self.flight) - len(self._deferred_running)
        return limit is not None and admitted >= self.builder.pool_size + limit

    def _defer(self, spec: BundleSpec) -> None:
        """A shed combination is built later, when the queue has room (not never)."""
        self.deferred[spec.key] = spec
        self.deferred.move_to_end(spec.key)
        while len(self.deferred) > MAX_DEFERRED:
            self.deferred.popitem(last=False)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain_deferred(), name="deferred-builds")

    async def _drain_deferred(self) -> None:
        """Starts deferred builds at warm-up priority while fewer than one round of the
        pool (pool size x batch max) of them are under way: a page's build always goes
        first, and these fill the rest of its batch."""
        room = self.builder.pool_size * self.builder.batch_max
        while self.deferred:
            if len(self._deferred_running) >= room:
                self._room.clear()
                await self._room.wait()
                continue
            key, spec = self.deferred.popitem(last=True)
            if key in self.flight or self.cache.get(key) is not None or key in self.failures:
                continue
            self._deferred_running.add(key)
            self.flight.ensure(key, functools.partial(self._build_deferred, spec))

    async def _build_deferred(self, spec: BundleSpec) -> Bundle:
        try:
            return await self._build(spec, Priority.WARM)
        finally:
            self._deferred_running.discard(spec.key)

    def _promote_uncovered(self, fallback: Fallback) -> None:
        """A new fallback for the version (or all of one whose first part was out):
        queued builds for pages it does not cover go first, as those pages have no
        other answer; builds that went first for that reason and are covered now go
        back among the others."""
        for job, priority in self.builder.queued_jobs(fallback.version):
            covered = fallback.covers(tuple(name for name, _ in job.registrations))
            if priority > Priority.UNCOVERED and not covered:
                self.builder.move(job.key, Priority.UNCOVERED)
            elif priority == Priority.UNCOVERED and covered:
                self.builder.move(job.key, Priority.TAILORED)

    def _lagging(self) -> bool:
        threshold_ms = self.settings.shed_lag_ms
        return threshold_ms > 0 and self.lag.smoothed_s * 1000 > threshold_ms

    async def answer(self, spec: BundleSpec, waited_s: float = 0.0) -> Answer:
        """``waited_s``: spent on the request already (its version's pull): taken from the
        fallback budget, which counts from the request's arrival."""
        bundle = self.cache.get(spec.key)
        if bundle is not None:  # the warm hit, without a coroutine more than it needs
            self.lookups["memory_hit"] += 1
            answer = Answer(bundle, Mode.HIT)
        else:
            answer = await self._answer(spec, waited_s)
        # Only what was answered with a bundle: junk and failures never reach the warm-up.
        self.combos.record(spec.modules)
        if self.shared is not None:
            self.shared.record(spec.modules)
        self.requests[answer.mode.value] += 1
        return answer

    async def variant(self, bundle: Bundle, kind: str, map_url: str | None = None) -> Bundle:
        """The bundle's JavaScript without its CSS injector (``js``), or its CSS as one
        stylesheet (``css``, empty when it has none; ``map_url`` names its source map):
        derived from the bundle, which keeps its CSS once, on first use, compressed, and
        kept in a small LRU."""
        key = (bundle.key, bundle.digest, kind, map_url)
        made = self._variants.get(key)
        if made is None:
            made = await asyncio.to_thread(_derive, bundle, kind, map_url)
            self._variants[key] = made
        return made

    async def document(self, name: str, data: bytes) -> Bundle:
        """``data`` (a source map, megabytes for a large fallback's) as a Bundle: a strong
        ETag and its brotli form, made once in a thread and kept in a small LRU."""
        made = self._documents.get(name)
        if made is None or made.code != data:
            made = await asyncio.to_thread(Bundle.create, name, data)
            with contextlib.suppress(ValueError):  # larger than the whole LRU: not kept
                self._documents[name] = made
        return made

    async def body(self, bundle: Bundle, encoding: str) -> bytes:
        """The bytes of ``bundle`` in ``encoding``; gzip is made once, in a thread, on the
        first request for it, and kept in a small LRU of its own."""
        if encoding != "gzip":
            return bundle.body(encoding)
        key = (bundle.key, bundle.digest)
        made = self._gzipped.get(key)
        if made is None:

            async def make() -> bytes:
                body = await asyncio.to_thread(gzip_body, bundle.code)
                # Kept before the flight ends: a request arriving between the flight's end
                # and its waiters' wake-up finds it here instead of making it again.
                with contextlib.suppress(ValueError):  # larger than the whole LRU: not kept
                    self._gzipped[key] = body
                return body

            made = await self._gzipping.do(key, make)
        return made

    async def _cached(self, spec: BundleSpec) -> Bundle | None:
        """Memory, then disk (a disk hit is promoted to memory)."""
        bundle = self.cache.get(spec.key)
        if bundle is not None:
            self.lookups["memory_hit"] += 1
            return bundle
        bundle = await self.disk.get(spec.key)
        if bundle is not None:
            self.lookups["disk_hit"] += 1
            self.cache.put(bundle)
            return bundle
        self.lookups["miss"] += 1
        return None

    async def _answer(self, spec: BundleSpec, waited_s: float) -> Answer:
        bundle = await self._cached(spec)
        if bundle is not None:
            return Answer(bundle, Mode.HIT)
        failure = self.failures.get(spec.key)
        if failure is not None:
            raise failure
        budget_ms = self.settings.fallback_budget_ms
        joining = spec.key in self.flight
        if budget_ms == -1:  # never the fallback: every miss waits for its own bundle,
            # however long the queue (as documented: the operator chose waiting over a fallback)
            return Answer(await self.flight.do(spec.key, lambda: self._build(spec)), Mode.BUILT)
        # Built once, ahead of every tailored build; nobody waits for it here.
        self.fallbacks.ensure(spec.version)
        fallback = self.fallbacks.loaded(spec.version)
        covered = fallback is not None and fallback.covers(spec.modules)
        budget_s = max(0.0, budget_ms / 1000 - waited_s)
        if not joining and fallback is not None and (self._queue_full() or self._lagging()):
            if covered:  # shed: the fallback at once; the build later, when there is room
                self._defer(spec)
                return Answer(fallback.bundle, Mode.SHED)
            # Nothing else can answer this page but its build, ahead of those that have
            # one (or the rest of a fallback whose first part is out): no budget to wait.
            budget_s = 0
        # No fallback yet (a release's first seconds): nothing is shed to a fallback that
        # may take longer than the builds; each miss races its own build against it.
        priority = Priority.UNCOVERED if fallback is not None and not covered else Priority.TAILORED
        build_fn = functools.partial(self._build, spec, priority)
        if joining:
            self.builder.promote(spec.key, priority)  # a warm-up's build a page now waits for
        # Started now: cancelling our wait below must never cancel the build itself.
        self.flight.ensure(spec.key, build_fn)
        build = asyncio.ensure_future(self.flight.do(spec.key, build_fn))
        try:
            return await self._race(spec, build, budget_s)
        finally:
            if not build.done():
                build.cancel()  # only our wait: the build goes on and fills the cache

    async def _race(
        self, spec: BundleSpec, build: asyncio.Future[Bundle], budget_s: float
    ) -> Answer:
        """The tailored bundle if it is ready within the budget; after it, whichever
        comes first: the fallback (if it covers the request) or the tailored bundle."""
        fallback = self.fallbacks.loaded(spec.version)
        if fallback is None or budget_s > 0:
            await asyncio.wait({build}, timeout=budget_s)
        if build.done():
            return await self._built_or_fallback(spec, build)
        fallback = self.fallbacks.loaded(spec.version)
        if fallback is None and self.fallbacks.failure(spec.version) is None:
            pending = asyncio.ensure_future(self._fallback(spec.version))
            try:
                # A large fallback's first part is published before the build ends.
                first: set[asyncio.Future[Any]] = {
                    build,
                    pending,
                    self.fallbacks.published(spec.version),
                }
                await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            finally:
                pending.cancel()
            if build.done():
                return await self._built_or_fallback(spec, build)
            fallback = self.fallbacks.loaded(spec.version)
        if fallback is not None and fallback.covers(spec.modules):
            return Answer(fallback.bundle, Mode.FALLBACK)
        improving = self.fallbacks.improving(spec.version)
        if improving is not None:  # only its first part is out: the rest may cover this page
            rest: set[asyncio.Future[Any]] = {build, improving}
            await asyncio.wait(rest, return_when=asyncio.FIRST_COMPLETED)
            fallback = self.fallbacks.loaded(spec.version)
            if not build.done() and fallback is not None and fallback.covers(spec.modules):
                return Answer(fallback.bundle, Mode.FALLBACK)
        await asyncio.wait({build})
        return await self._built_or_fallback(spec, build)

    async def _built_or_fallback(self, spec: BundleSpec, build: asyncio.Future[Bundle]) -> Answer:
        """The finished build; a build error is raised, not hidden, except a disk fault
        (the service's, not the request's): then the fallback, where it covers."""
        try:
            return Answer(build.result(), Mode.BUILT)
        except DiskFault:
            fallback = await self._fallback(spec.version)
            if fallback is not None and fallback.covers(spec.modules):
                return Answer(fallback.bundle, Mode.FALLBACK)
            raise

    async def _fallback(self, version: str) -> Fallback | None:
        """The version's fallback once it exists; None if it cannot be had (the
        request's own build reports why, e.g. an unknown version)."""
        try:
            return await self.fallbacks.get(version)
        except BundlerError:
            return None

    async def _build(self, spec: BundleSpec, priority: Priority = Priority.TAILORED) -> Bundle:
        lease: Lease | None = None
        if self.shared is not None:
            found = await self._shared_or_lease(spec.key)
            if isinstance(found, Bundle):  # another replica built it
                self.lookups["shared_hit"] += 1
                self._room.set()
                self._keep(found)
                return found
            lease = found
        try:
            bundle = await build_bundle(self.source, self.builder, spec, priority)
        except (BuildFailed, UnknownModule) as exc:
            self.failures[spec.key] = exc
            raise
        except BaseException:
            if lease is not None:
                self._background(lease.release(), f"lease-release:{spec.key}")
            raise
        finally:
            self._room.set()
        self._keep(bundle)
        if self.shared is not None and lease is not None:
            self._background(self._share(bundle, lease), f"shared-write:{spec.key}")
        return bundle

    async def _shared_or_lease(self, key: str) -> Bundle | Lease:
        """The bundle from the shared tier, or the lease to build it (one replica builds a
        key at a time; the others wait for it to land, or for its lease to lapse)."""
        assert self.shared is not None
        while True:
            bundle = await self.shared.get(key)
            if bundle is not None:
                return bundle
            lease = await self.shared.acquire(key)
            if lease is not None:
                return lease
            self.lease_waits += 1
            await self.shared.wait_landed(key)

    async def _share(self, bundle: Bundle, lease: Lease) -> None:
        assert self.shared is not None
        try:
            await self.shared.put(bundle)
        finally:
            await lease.release()

    def _keep(self, bundle: Bundle) -> None:
        self.cache.put(bundle)
        # The response need not wait for the fsync: the memory tier has it meanwhile.
        task = asyncio.create_task(self.disk.put(bundle), name=f"disk-write:{bundle.key}")
        self._disk_writes.add(task)
        task.add_done_callback(self._disk_write_done)

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._shared_writes[name] = task
        task.add_done_callback(
            lambda done: (
                self._shared_writes.pop(name, None)
                if self._shared_writes.get(name) is done
                else None
            )
        )

    def _disk_write_done(self, task: asyncio.Task[None]) -> None:
        """One log line per change of state, not one per write of a full disk."""
        self._disk_writes.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not self.disk_failing:
            logger.error(
                "disk cache writes fail; serving from memory", extra={"error": repr(error)}
            )
        elif error is None and self.disk_failing:
            logger.info("disk cache writes work again")
        self.disk_failing = error is not None

    async def built(self, spec: BundleSpec, priority: Priority = Priority.TAILORED) -> Bundle:
        """The tailored bundle, built if need be; never the fallback (source maps, warm-up)."""
        bundle = await self._cached(spec)
        if bundle is not None:
            return bundle
        failure = self.failures.get(spec.key)
        if failure is not None:
            raise failure
        if spec.key not in self.flight and self._queue_full():
            raise Overloaded("the build queue is full; retry in a moment")
        return await self.flight.do(spec.key, lambda: self._build(spec, priority))

    async def source_map(self, spec: BundleSpec) -> bytes:
        """The tailored bundle's source map: built by a second esbuild run on first request
        (esbuild makes the same code with or without it), then kept in memory and shared."""
        bundle = await self.built(spec)
        if bundle.sourcemap is not None:  # a disk entry written before maps were lazy
            return bundle.sourcemap
        return await self._map(spec, bundle, of_css=False)

    async def asset(self, version: str, name: str) -> bytes:
        """A moved-out image or font: stored when a bundle here was built, else found in
        the version's source by its hash (a replica that never built that bundle)."""
        validate_version(version)
        if not css.ASSET_NAME.fullmatch(name):
            raise NotFound(f"no asset {name!r}: asset names come from a bundle's CSS")
        data = await asyncio.to_thread(self.builder.assets.get, name)
        if data is None:
            async with self.source.use(version) as root:
                data = await asyncio.to_thread(self.builder.assets.find, root, name)
        if data is None:
            raise NotFound(f"version {version} has no asset {name!r}")
        return data

    async def css_source_map(self, spec: BundleSpec) -> bytes:
        """The source map of the tailored bundle's CSS, as /bundle.css serves it: made by
        the same second run as the bundle's own map."""
        bundle = await self.built(spec)
        if not css.has_css(bundle.code):
            raise NotFound(f"the modules of {spec.query} import no CSS: there is no CSS map")
        return await self._map(spec, bundle, of_css=True)

    async def _map(self, spec: BundleSpec, bundle: Bundle, *, of_css: bool) -> bytes:
        key = spec.key + (CSS_MAP_SUFFIX if of_css else "")
        cached = self.maps.get(key)
        if cached is not None:
            return cached
        return await self.map_flight.do(key, lambda: self._shared_map(spec, bundle, key, of_css))

    @staticmethod
    def _map_name(key: str, bundle: Bundle) -> str:
        """A map's name in the shared tier: it is the map of exactly this code."""
        return f"m:{key}:{bundle.digest[:32]}"

    async def _shared_map(self, spec: BundleSpec, bundle: Bundle, key: str, of_css: bool) -> bytes:
        """The map another replica made, else made here (and then shared)."""
        if self.shared is not None:
            found = await self.shared.get_sealed(self._map_name(key, bundle))
            if found is not None:
                self._keep_map(key, found)
                return found
        return await self._build_map(spec, bundle, of_css=of_css)

    def _keep_map(self, key: str, made: bytes) -> None:
        if len(made) <= MAP_CACHE_BYTES // 4:
            self.maps[key] = made

    async def _build_map(self, spec: BundleSpec, bundle: Bundle, *, of_css: bool = False) -> bytes:
        output = await build_output(
            self.source, self.builder, spec, Priority.TAILORED, with_map=True
        )
        assert output.sourcemap is not None
        if output.code != bundle.code:
            logger.warning(
                "source map made for other code than the cached bundle (source changed?)",
                extra={"key": spec.key, "bundle": spec.query},
            )
        for key, made in (
            (spec.key, output.sourcemap),
            (spec.key + CSS_MAP_SUFFIX, output.css_map),
        ):
            if made is None:
                continue
            self._keep_map(key, made)
            if self.shared is not None and output.code == bundle.code:
                name = self._map_name(key, bundle)
                self._background(self.shared.put_sealed(name, made), f"shared-write:{name}")
        if of_css:
            if output.css_map is None:
                raise Unavailable("the CSS source map could not be made; retry")
            return output.css_map
        return output.sourcemap

    async def warm(self, spec: BundleSpec) -> str:
        """Build one combination ahead of its traffic, at the lowest priority."""
        if await self._cached(spec) is not None:
            return "cached"
        await self.built(spec, Priority.WARM)
        # Warmed means the fleet has it: answered once it is in the shared tier too.
        pending = self._shared_writes.get(f"shared-write:{spec.key}")
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        return "built"

    def abort_waiters(self) -> int:
        """The shutdown deadline: every request still waiting for a build, a fallback or a
        pull is answered now (503, retry elsewhere) instead of being cut off."""
        error = Unavailable("the service is shutting down; retry")
        flights = (self.flight, self.map_flight, self.fallbacks.flight)
        return sum(f.fail_waiters(error) for f in flights) + self.source.fail_waiters(error)

    def begin_drain(self) -> None:
        self.draining = True
        logger.info("draining: /readyz answers 503 from now on")

    async def close(self) -> None:
        self.draining = True
        for task in (self._startup, self._saver, self._drainer, self._watcher):
            if task is not None:
                task.cancel()
        try:
            await asyncio.to_thread(self.combos.save, self.combos.snapshot())
        except OSError as exc:  # a full or read-only disk must not fail the shutdown
            logger.error("could not save the popularity sketch", extra={"error": str(exc)})
        await asyncio.gather(
            *self._disk_writes, *self._shared_writes.values(), return_exceptions=True
        )
        await asyncio.to_thread(self.disk.close)
        await self.flight.close()
        await self.map_flight.close()
        await self.fallbacks.close()
        await self.builder.kill_all()
        await self.source.close()
        if self.shared is not None:
            await self.shared.close()

    def _fallback_module_counts(self) -> dict[str, float]:
        counts: dict[str, float] = {}
        for fallback in self.fallbacks.all_loaded():
            counts[f"{fallback.version}|included"] = len(fallback.names)
            for reason, n in reason_counts(fallback.left_out).items():
                counts[f"{fallback.version}|{reason}"] = n
        return counts

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {
            "bundler_requests": dict(self.requests),
            "bundler_cache_lookups": dict(self.lookups),
            "bundler_builds": dict(self.builder.results),
            "bundler_esbuild_runs": dict(self.builder.runs),
            "bundler_esbuild_starts": float(self.builder.starts),
            "bundler_source_pulls": dict(self.source.pull_results),
            "bundler_source_pull_seconds": self.source.pull_seconds,
            "bundler_build_queue_depth": self.builder.queued,
            "bundler_build_pool_busy": self.builder.busy,
            "bundler_build_pool_size": self.builder.pool_size,
            "bundler_cache_entries": {"memory": len(self.cache), "disk": len(self.disk)},
            "bundler_cache_bytes": {"memory": self.cache.bytes, "disk": self.disk.bytes},
            "bundler_cache_corrupt_entries": self.disk.corrupt,
            "bundler_disk_writes_skipped": self.disk.skipped,
            "bundler_fallbacks_loaded": len(self.fallbacks),
            "bundler_fallback_bytes": {
                f.version: len(f.bundle.code) for f in self.fallbacks.all_loaded()
            },
            "bundler_fallback_modules": self._fallback_module_counts(),
            "bundler_fallback_ready_seconds": {
                f"{f.version}|{part}": seconds
                for f in self.fallbacks.all_loaded()
                for part, seconds in self.fallbacks.ready_seconds.get(f.version, {}).items()
            },
            "bundler_ready": float(self.ready),
            "bundler_disk_writes_failing": float(self.disk_failing),
            "bundler_data_dir_writable": float(self.data_dir_problem is None),
            "bundler_shared_up": float(self.shared.up) if self.shared is not None else 0.0,
            "bundler_shared_lookups": dict(self.shared.results) if self.shared is not None else {},
            "bundler_shared_lease_waits": float(self.lease_waits),
            "bundler_draining": float(self.draining),
            "bundler_event_loop_lag_max_seconds": self.lag.max_s,
            "bundler_event_loop_lag_smoothed_seconds": self.lag.smoothed_s,
        }
