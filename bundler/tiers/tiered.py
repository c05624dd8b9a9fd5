"""The tiers as one cache: memory, then disk, then the fleet's shared tier.

Look-up order and promotion: a request asks memory (``hit``, synchronous: the warm path),
then disk (``cached``: a disk hit is promoted to memory); the shared tier is asked only
by the one flight that would build the key (bundler.fleet.builds), since a look-up there
costs a round trip and may wait on another replica's lease. What is found there, or
built, is ``keep``-ed: in memory at once, then written behind the answer to disk, and
(built here) to the shared tier, never before the response. The shutdown and
`POST /warm` wait for those writes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Coroutine
from typing import Any

from bundler.bundle import Bundle
from bundler.fleet.lease import Lease
from bundler.tiers.base import BundleTier
from bundler.tiers.disk import DiskTier
from bundler.tiers.memory import MemoryTier

logger = logging.getLogger(__name__)


class TieredCache:
    def __init__(self, memory: MemoryTier, disk: DiskTier, shared: BundleTier) -> None:
        self.memory = memory
        self.disk = disk
        self.shared = shared
        # memory_hit, disk_hit, shared_hit, miss (bundler_cache_lookups_total)
        self.lookups: collections.Counter[str] = collections.Counter()
        self.disk_failing = False
        self._disk_writes: set[asyncio.Task[None]] = set()
        # Shared-tier writes and lease releases under way, by name.
        self._shared: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------ look-up

    def hit(self, key: str) -> Bundle | None:
        """The memory tier only, without a coroutine (every warm hit passes here); a page
        asking, so it counts as asking again (bundler.tiers.memory)."""
        bundle = self.memory.hit(key)
        if bundle is not None:
            self.lookups["memory_hit"] += 1
        return bundle

    async def cached(self, key: str) -> Bundle | None:
        """Memory, then disk (a disk hit is promoted to memory)."""
        bundle = self.hit(key)
        if bundle is not None:
            return bundle
        bundle = await self.disk.get(key)
        if bundle is not None:
            self.lookups["disk_hit"] += 1
            self.memory.add(bundle)
            return bundle
        self.lookups["miss"] += 1
        return None

    # ------------------------------------------------------------ writes

    def keep(self, bundle: Bundle, lease: Lease | None = None) -> None:
        """In memory now; on disk behind the answer (it need not wait for the fsync).
        With this replica's ``lease`` (it built the bundle): to the shared tier too, and
        the lease released once it is there (the other replicas then find it)."""
        self.memory.add(bundle)
        task = asyncio.create_task(self.disk.put(bundle), name=f"disk-write:{bundle.key}")
        self._disk_writes.add(task)
        task.add_done_callback(self._disk_write_done)
        if lease is not None:
            self.in_background(self._share(bundle, lease), shared_write_name(bundle.key))

    async def _share(self, bundle: Bundle, lease: Lease) -> None:
        try:
            await self.shared.put(bundle)
        finally:
            await lease.release()

    def in_background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A shared-tier write (or lease release) under ``name``, awaited at the end."""
        task = asyncio.create_task(coro, name=name)
        self._shared[name] = task
        task.add_done_callback(
            lambda done: self._shared.pop(name, None) if self._shared.get(name) is done else None
        )

    async def shared_written(self, key: str) -> None:
        """Until the bundle of ``key`` is in the shared tier (if it is being written)."""
        pending = self._shared.get(shared_write_name(key))
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)

    async def flush(self) -> None:
        """Until every write under way has ended (the shutdown, tests)."""
        await asyncio.gather(*self._disk_writes, *self._shared.values(), return_exceptions=True)

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

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        """The disk tier's index is read; the shared tier never fails the start (Redis
        may come later)."""
        await self.memory.start()
        await self.disk.start()
        await self.shared.start()

    async def close(self) -> None:
        await self.flush()
        await self.disk.close()
        await self.shared.close()
        await self.memory.close()

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {
            "bundler_cache_lookups": dict(self.lookups),
            "bundler_cache_entries": {
                "memory": self.memory.entries(),
                "disk": self.disk.entries(),
            },
            "bundler_cache_bytes": {
                "memory": self.memory.stored_bytes(),
                "disk": self.disk.stored_bytes(),
            },
            "bundler_cache_max_bytes": {
                "memory": self.memory.max_bytes,
                "disk": self.disk.max_bytes,
            },
            "bundler_cache_corrupt_entries": self.disk.corrupt,
            "bundler_disk_writes_skipped": self.disk.skipped,
            "bundler_disk_writes_failing": float(self.disk_failing),
        }


def shared_write_name(key: str) -> str:
    return f"shared-write:{key}"
