"""One build per bundle across a fleet: a replica takes the bundle from the shared tier,
or the lease to build it while the others wait for it to land (or for the lease to
lapse: its holder died). The bundle it built goes to the shared tier, then the lease is
released (tiers.tiered.TieredCache.keep). A fleet of one (NoFleet) leases at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bundler.bundle import Bundle

if TYPE_CHECKING:
    from bundler.fleet import Fleet
    from bundler.fleet.lease import Lease


async def shared_or_lease(fleet: Fleet, key: str) -> tuple[Bundle | Lease, int]:
    """The bundle from the shared tier, or the lease to build it; and how many times it
    waited for another replica's lease."""
    waits = 0
    while True:
        bundle = await fleet.get(key)
        if bundle is not None:
            return bundle, waits
        lease = await fleet.acquire(key)
        if lease is not None:
            return lease, waits
        waits += 1
        await fleet.wait_landed(key)
