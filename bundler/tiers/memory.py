"""The memory tier: an LRU bounded in bytes (cachetools), the first tier every request asks.

Besides the BundleTier interface it offers ``peek`` and ``add``, synchronous: a warm hit
is answered without a coroutine more than it needs (each costs the event loop, measured
in bench_core's warm-hit table).
"""

from __future__ import annotations

from cachetools import LRUCache

from bundler.bundle import Bundle


class MemoryTier:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lru: LRUCache[str, Bundle] = LRUCache(maxsize=max_bytes, getsizeof=_size)

    def peek(self, key: str) -> Bundle | None:
        return self._lru.get(key)

    def add(self, bundle: Bundle) -> None:
        if bundle.size <= self._lru.maxsize:
            self._lru[bundle.key] = bundle

    async def get(self, key: str) -> Bundle | None:
        return self.peek(key)

    async def put(self, bundle: Bundle) -> None:
        self.add(bundle)

    def entries(self) -> int:
        return len(self._lru)

    def stored_bytes(self) -> int:
        return int(self._lru.currsize)

    def bundles(self) -> list[Bundle]:
        """What the tier holds now, least recently used first."""
        return list(self._lru.values())

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _size(bundle: Bundle) -> int:
    return bundle.size
