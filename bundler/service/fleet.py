"""One build per bundle across a fleet: a replica takes the bundle from the shared tier,
or the lease to build it while the others wait for it to land (or for the lease to
lapse: its holder died); the bundle it built goes to the shared tier, then the lease."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.cache import Bundle

if TYPE_CHECKING:
    from bundler.shared import SharedTier
    from bundler.shared_lease import Lease


async def shared_or_lease(shared: SharedTier, key: str) -> tuple[Bundle | Lease, int]:
    """The bundle from the shared tier, or the lease to build it; and how many times it
    waited for another replica's lease."""
    waits = 0
    while True:
        bundle = await shared.get(key)
        if bundle is not None:
            return bundle, waits
        lease = await shared.acquire(key)
        if lease is not None:
            return lease, waits
        waits += 1
        await shared.wait_landed(key)


async def share(shared: SharedTier, bundle: Bundle, lease: Lease) -> None:
    try:
        await shared.put(bundle)
    finally:
        await lease.release()
