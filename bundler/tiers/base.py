"""What every cache tier is: a store of built bundles by key, bounded by its owner.

The memory tier, the disk tier and the fleet's Redis all answer to BundleTier, so the
tiered cache (tiers.tiered) treats them alike; a tier that holds nothing (NoTier) stands
where a deployment has none (no Redis), instead of a check for None at every use.
"""

from __future__ import annotations

from typing import Protocol

from bundler.bundle import Bundle


class BundleTier(Protocol):
    async def get(self, key: str) -> Bundle | None:
        """The bundle stored under ``key`` (verified whole), or None."""
        ...

    async def put(self, bundle: Bundle) -> None:
        """Stores the bundle under its key; a tier may decline (full, failing)."""
        ...

    def entries(self) -> int | None:
        """Bundles held now; None where the tier cannot tell (Redis, shared by a fleet)."""
        ...

    def stored_bytes(self) -> int | None:
        """Bytes held now (the bound is the tier's own); None where it cannot tell."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NoTier:
    """Holds nothing: every look-up misses, every write is dropped."""

    async def get(self, key: str) -> Bundle | None:
        return None

    async def put(self, bundle: Bundle) -> None:
        return None

    def entries(self) -> int | None:
        return None

    def stored_bytes(self) -> int | None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
