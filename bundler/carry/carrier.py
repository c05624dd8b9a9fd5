"""The service's carry-over: a miss for a version is answered with a bundle of the same
modules built for another version, when the decision (bundler.carry.record) says this
version would build it byte for byte alike; and, as soon as a new version is here, its
most popular combinations are carried before they are asked for.

Which bundles can be carried is known by their modules and build options (an index of
what was built or carried here, by version); the bytes come from the tiers. Everything
that reads files runs in a worker thread; each version's file digests and path states
are taken once (a sweep asks the same package.json thousands of times).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from cachetools import LRUCache

from bundler.build.marks import rename
from bundler.bundle import Bundle
from bundler.carry.record import Look, decide
from bundler.entry import Registration
from bundler.errors import BundlerError, UnknownModule
from bundler.flight import SingleFlight
from bundler.resolve import resolve_modules
from bundler.sources import SourceStore, version_sort_key
from bundler.spec import BuildOptions, BundleSpec
from bundler.tiers.tiered import TieredCache

logger = logging.getLogger(__name__)

# Module lists whose bundles' keys are known, by version (a few bytes each).
INDEXED = 65536
# Versions whose file digests and path states are kept (a release: the old and the new).
LOOKED_AT = 4


class Carrier:
    def __init__(
        self,
        source: SourceStore,
        tiers: TieredCache,
        esbuild_version: Callable[[], Awaitable[str]],
        *,
        enabled: bool = True,
        carry_from: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.source = source
        self.tiers = tiers
        self.esbuild_version = esbuild_version
        self.enabled = enabled
        # Versions whose bundles are looked for by key (in every tier, the fleet's too)
        # even when this process never built or read them: the version pages use now.
        self.carry_from = carry_from
        # (modules, options) -> {version: key}
        self._index: LRUCache[tuple[tuple[str, ...], BuildOptions], dict[str, str]] = LRUCache(
            maxsize=INDEXED
        )
        self._looks: LRUCache[tuple[str, str | None], Look] = LRUCache(maxsize=LOOKED_AT)
        # carried, and rebuilt by reason (bundler_carryover_total): each key decided once
        self.results: collections.Counter[str] = collections.Counter()
        # The same by the version carried to: carried, rebuilt (the status page).
        self.by_version: collections.defaultdict[str, collections.Counter[str]] = (
            collections.defaultdict(collections.Counter)
        )
        self._rebuilt: LRUCache[str, str] = LRUCache(maxsize=INDEXED)
        self._carried: LRUCache[str, str] = LRUCache(maxsize=INDEXED)  # key -> from version
        # The bundles carried, while anything holds them: an answer is "carried" only if
        # its bundle is the very one carried (not one built later for the same key).
        self._carried_bundles: weakref.WeakValueDictionary[str, Bundle] = (
            weakref.WeakValueDictionary()
        )
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        self._flight: SingleFlight[str, Bundle | None] = SingleFlight("carry")
        # Decisions read files and hold the GIL for milliseconds: one thread of their own,
        # so that they never hold up the disk reads, compression and fallback builds
        # that share the default pool, and take one CPU at most.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="carry")

    def built(self, spec: BundleSpec, bundle: Bundle) -> None:
        """A tailored bundle of ``spec`` is in the tiers (built or carried here)."""
        if bundle.inputs and bundle.version_at:
            self._index.setdefault((spec.modules, spec.options), {})[spec.version] = bundle.key

    async def carry(self, spec: BundleSpec) -> Bundle | None:
        """``spec``'s bundle made from one built for another version, or None (built, then).
        Once per key however many ask at once (a request and the sweep)."""
        if not self.enabled or spec.key in self._rebuilt:
            return None
        return await self._flight.do(spec.key, functools.partial(self._carry, spec))

    async def _carry(self, spec: BundleSpec) -> Bundle | None:
        known = self._index.get((spec.modules, spec.options), {})
        versions = {*known, *self.carry_from()} - {spec.version}
        # The newest first (the likeliest to match), of those on disk: a decision never
        # waits for a pull.
        others = sorted(versions, key=version_sort_key, reverse=True)
        for version in [v for v in others if self.source.here(v)][:2]:
            key = known.get(version) or await self._key_in(spec, version)
            # Not counted as a look-up of the tiers: no page asked for this key. The
            # shared tier last: another replica built it (a fleet's replicas each build
            # a part of a version's bundles), or this one before its restart.
            tiers = self.tiers
            old = tiers.memory.peek(key) or await tiers.disk.get(key) or await tiers.shared.get(key)
            if old is None:
                known.pop(version, None)
                continue
            try:
                carried = await self._carry_from(spec, version, old)
            except BundlerError as exc:  # the old version went meanwhile: built, then
                logger.info("not carried", extra={"bundle": spec.query, "why": exc.message})
                continue
            if carried is not None:
                return carried
        return None

    async def _key_in(self, spec: BundleSpec, version: str) -> str:
        """The key of ``spec``'s modules built for ``version`` (here: its digest is read
        from its extraction's facts, not hashed again)."""
        content = await self.source.digest(version)
        return dataclasses.replace(spec, version=version, content=content).key

    async def _carry_from(self, spec: BundleSpec, version: str, old: Bundle) -> Bundle | None:
        esbuild = await self.esbuild_version()
        loop = asyncio.get_running_loop()
        async with self.source.use(version) as old_root, self.source.use(spec.version) as root:
            # On the loop, as a build resolves them: resolve's caches are not for threads.
            try:
                registrations: Sequence[Registration] | None = resolve_modules(
                    root, spec.version, spec.modules
                )
            except UnknownModule:
                registrations = None
            reason = await loop.run_in_executor(
                self._thread,
                decide,
                old.inputs,
                self._look(version, old_root),
                self._look(spec.version, root),
                esbuild,
                registrations,
            )
        if reason is not None:
            if spec.key not in self._rebuilt:
                self.results[f"rebuilt:{reason}"] += 1
                self.by_version[spec.version]["rebuilt"] += 1
            self._rebuilt[spec.key] = reason
            logger.debug(
                "not carried", extra={"bundle": spec.query, "from": version, "why": reason}
            )
            return None
        try:
            code, marks = rename(old.code, old.version_at, version, spec.version)
        except ValueError:
            self.results["rebuilt:marks"] += 1
            self.by_version[spec.version]["rebuilt"] += 1
            return None
        bundle = await asyncio.to_thread(
            functools.partial(Bundle.create, spec.key, code, version_at=marks, inputs=old.inputs)
        )
        self.results["carried"] += 1
        self.by_version[spec.version]["carried"] += 1
        self._carried[spec.key] = version
        self._carried_bundles[spec.key] = bundle
        return bundle

    def _look(self, version: str, root: Path) -> Look:
        identity = (version, self.source.known_digest(version))
        look = self._looks.get(identity)
        if look is None or look.root != root:
            look = self._looks[identity] = Look(root)
        return look

    def is_carried(self, bundle: Bundle) -> bool:
        """Whether ``bundle`` is one this carrier carried over (not built)."""
        return self._carried_bundles.get(bundle.key) is bundle

    def carried_from(self, key: str) -> str | None:
        """The version the bundle of ``key`` was carried from (None: built, or not here)."""
        return self._carried.get(key)

    def swept(self, version: str) -> bool:
        """Nothing to sweep for ``version`` (done or under way, or carry-over is off): a
        warm hit asks this, so it must cost a look-up."""
        return not self.enabled or version in self._sweeps

    def sweep(
        self,
        version: str,
        options: BuildOptions,
        popular: Sequence[tuple[str, ...]],
        fill: Callable[[tuple[str, ...]], Awaitable[None]],
    ) -> None:
        """Once per version: ``fill`` each popular module list that has a bundle of another
        version here, most popular first, one at a time, behind the requests."""
        if not self.enabled or version in self._sweeps:
            return
        elsewhere = any(v != version for v in self.carry_from())
        wanted = [
            modules
            for modules in popular
            if elsewhere or any(v != version for v in self._index.get((modules, options), {}))
        ]

        async def run() -> None:
            for modules in wanted:
                try:
                    await fill(modules)
                except Exception as exc:  # a request for it will say what is wrong
                    logger.debug("carry sweep skipped one", extra={"error": repr(exc)})

        self._sweeps[version] = asyncio.create_task(run(), name=f"carry-sweep:{version}")

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {
            "bundler_carryover": {
                key.replace(":", "|") if ":" in key else f"{key}|": float(n)
                for key, n in self.results.items()
            }
        }

    async def close(self) -> None:
        for task in self._sweeps.values():
            task.cancel()
        await asyncio.gather(*self._sweeps.values(), return_exceptions=True)
        await self._flight.close()
        self._thread.shutdown(wait=False, cancel_futures=True)
