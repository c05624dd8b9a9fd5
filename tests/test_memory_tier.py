"""The memory tier's segmented LRU: what pages ask for again stays through a stream of
bundles asked for once; the byte bound holds. The naive control is a plain LRU (the tier
as it was, cachetools), which the same stream empties of them."""

from __future__ import annotations

import pytest
from cachetools import LRUCache

from bundler.bundle import Bundle
from bundler.tiers.memory import MemoryTier


def bundle(key: str, size: int = 1000) -> Bundle:
    return Bundle(key=key, code=b"x" * size, br=b"", digest=key)


class PlainLRU:
    """The naive control: one LRU over everything, every look-up a use."""

    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[str, Bundle] = LRUCache(maxsize=max_bytes, getsizeof=lambda b: b.size)

    def hit(self, key: str) -> Bundle | None:
        return self._lru.get(key)

    def add(self, b: Bundle) -> None:
        self._lru[b.key] = b


@pytest.mark.parametrize("tier", ["segmented", "naive"])
def test_a_flood_of_bundles_asked_once_leaves_what_pages_ask_again(tier: str) -> None:
    """20 bundles of 1 KB fit; 5 popular ones are asked for every few requests while 200
    distinct ones are asked for once each (a flood of distinct combinations)."""
    memory = MemoryTier(20_000) if tier == "segmented" else PlainLRU(20_000)
    popular = [f"popular-{i}" for i in range(5)]
    for key in popular:
        memory.add(bundle(key))
        memory.hit(key)
    kept_hits = 0
    for n in range(200):
        memory.add(bundle(f"flood-{n}"))
        if n % 10 == 9:  # each popular bundle asked again every 50 flood bundles
            key = popular[(n // 10) % 5]
            kept_hits += memory.hit(key) is not None
    if tier == "segmented":
        assert kept_hits == 20
        assert all(memory.peek(key) for key in popular)
    else:
        assert kept_hits < 5  # the flood pushed them out between asks


def test_the_byte_bound_holds_and_a_key_is_held_once() -> None:
    memory = MemoryTier(10_000)
    for n in range(50):
        memory.add(bundle(f"k{n % 7}", 900 + n))
        memory.hit(f"k{(n * 3) % 7}")
        assert memory.stored_bytes() <= 10_000
        assert memory.stored_bytes() == sum(b.size for b in memory.bundles())
        assert len({b.key for b in memory.bundles()}) == memory.entries()
    assert memory.peek("missing") is None and memory.hit("missing") is None
    memory.add(bundle("huge", 10_001))  # larger than the whole tier: not kept
    assert memory.peek("huge") is None


def test_until_the_tier_is_full_nothing_is_evicted() -> None:
    """While not full it is a plain cache: every bundle stays, asked again or not."""
    memory = MemoryTier(100_000)
    for n in range(90):
        memory.add(bundle(f"k{n}"))
    assert memory.entries() == 90


def test_protected_gives_room_to_a_newcomer_larger_than_probation() -> None:
    memory = MemoryTier(10_000)
    for n in range(8):
        memory.add(bundle(f"p{n}"))
        memory.hit(f"p{n}")  # protected up to its 8,000 bytes
    memory.add(bundle("big", 5_000))
    assert memory.peek("big") is not None and memory.stored_bytes() <= 10_000
