"""Writes behind the answer: a built bundle goes to the disk tier and the shared tier
after its response, never before (the memory tier has it meanwhile); the shutdown and
`POST /warm` wait for them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from bundler.cache import Bundle, MemoryCache
from bundler.disk import DiskCache

logger = logging.getLogger(__name__)


def shared_write_name(key: str) -> str:
    return f"shared-write:{key}"


class WriteBehind:
    def __init__(self, cache: MemoryCache, disk: DiskCache) -> None:
        self.cache = cache
        self.disk = disk
        self.disk_failing = False
        self._disk_writes: set[asyncio.Task[None]] = set()
        # Shared-tier writes and lease releases under way, by name.
        self._shared: dict[str, asyncio.Task[None]] = {}

    def keep(self, bundle: Bundle) -> None:
        """In memory now; on disk behind the answer (it need not wait for the fsync)."""
        self.cache.put(bundle)
        task = asyncio.create_task(self.disk.put(bundle), name=f"disk-write:{bundle.key}")
        self._disk_writes.add(task)
        task.add_done_callback(self._disk_write_done)

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
