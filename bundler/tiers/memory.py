"""The memory tier: a segmented LRU bounded in bytes, the first tier every request asks.

A plain LRU lets any stream of bundles asked for once (a flood of distinct combinations,
from one client or from many each under its limits) push out what pages ask for again and
again: measured, 23 of 200 honest warm requests rebuilt under a flood from 32 addresses
(docs/benchmarks.md, "The flood"). So the tier has two segments. A new bundle enters
*probation*; a page asking for it again promotes it to *protected*, which may hold
PROTECTED_SHARE of the bytes, its least recently used falling back to probation. Eviction
takes from probation first. Bundles asked for once only ever churn probation, and what
pages keep asking for stays. While the tier is not full it behaves as a plain LRU: nothing
is evicted at all.

Only a page's request (``hit``) counts as asking again: ``peek`` (the service checking
what it holds) moves nothing. Besides the BundleTier interface it offers ``peek``, ``hit``
and ``add``, synchronous: a warm hit is answered without a coroutine more than it needs
(each costs the event loop, measured in bench_core's warm-hit table).
"""

from __future__ import annotations

from collections import OrderedDict

from bundler.bundle import Bundle

# The share of the bytes for bundles asked for more than once (as segmented LRUs and
# W-TinyLFU's main space keep it); the rest is for newcomers to prove themselves.
PROTECTED_SHARE = 0.8


class MemoryTier:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.protected_max = int(max_bytes * PROTECTED_SHARE)
        self._probation: OrderedDict[str, Bundle] = OrderedDict()
        self._protected: OrderedDict[str, Bundle] = OrderedDict()
        self._probation_bytes = 0
        self._protected_bytes = 0

    def peek(self, key: str) -> Bundle | None:
        """The bundle if held; its place is left as it is."""
        return self._protected.get(key) or self._probation.get(key)

    def hit(self, key: str) -> Bundle | None:
        """A page asks for ``key``: held in probation, it is promoted; held in protected,
        it becomes its most recently used."""
        bundle = self._protected.get(key)
        if bundle is not None:
            self._protected.move_to_end(key)
            return bundle
        bundle = self._probation.pop(key, None)
        if bundle is None:
            return None
        self._probation_bytes -= bundle.size
        self._protected[key] = bundle
        self._protected_bytes += bundle.size
        while self._protected_bytes > self.protected_max and len(self._protected) > 1:
            demoted_key, demoted = self._protected.popitem(last=False)
            self._protected_bytes -= demoted.size
            self._probation[demoted_key] = demoted  # its most recent end: a second chance
            self._probation_bytes += demoted.size
        return bundle

    def add(self, bundle: Bundle) -> None:
        """Into probation (replacing what the key held); a bundle larger than the whole
        tier is not kept."""
        if bundle.size > self.max_bytes:
            return
        self._forget(bundle.key)
        self._probation[bundle.key] = bundle
        self._probation_bytes += bundle.size
        while self._probation_bytes + self._protected_bytes > self.max_bytes:
            # Probation's least recently used first, never the bundle just added: when
            # probation holds only it, protected gives room.
            if len(self._probation) > 1:
                _, evicted = self._probation.popitem(last=False)
                self._probation_bytes -= evicted.size
            else:
                _, evicted = self._protected.popitem(last=False)
                self._protected_bytes -= evicted.size

    def _forget(self, key: str) -> None:
        old = self._probation.pop(key, None)
        if old is not None:
            self._probation_bytes -= old.size
        old = self._protected.pop(key, None)
        if old is not None:
            self._protected_bytes -= old.size

    async def get(self, key: str) -> Bundle | None:
        return self.peek(key)

    async def put(self, bundle: Bundle) -> None:
        self.add(bundle)

    def entries(self) -> int:
        return len(self._probation) + len(self._protected)

    def stored_bytes(self) -> int:
        return self._probation_bytes + self._protected_bytes

    def bundles(self) -> list[Bundle]:
        """What the tier holds now, the first to be evicted first."""
        return [*self._probation.values(), *self._protected.values()]

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
