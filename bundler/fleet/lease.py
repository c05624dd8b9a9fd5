"""One build per key across a fleet: the lease a replica takes on a bundle's key before
building it (SET NX with an expiry), renewed until its build is done, released (or left
to lapse, if its holder died) so that the others look again."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bundler.fleet.client import RedisFleet

# A lease lapses this long after its last renewal: a replica that died, or cannot reach
# Redis any more, holds nobody up for longer.
LEASE_S = 3.0
RENEW_EVERY_S = 1.0
# Only the owner renews or releases its lease.
RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Released, the waiters are told to look again at once (the bundle landed, or the build
# failed and one of them may take the lease).
RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  return redis.call('publish', KEYS[2], ARGV[2])
end
return 0
"""


class Lease:
    """This replica's right to build one key (``held=False``: Redis could not be asked,
    so it builds without one, as a replica without Redis would)."""

    def __init__(self, tier: RedisFleet | None, key: str, held: bool) -> None:
        self.tier = tier
        self.key = key
        self.held = held
        self._renewing: asyncio.Task[None] | None = None
        if held:
            self._renewing = asyncio.create_task(self._renew(), name=f"lease:{key}")

    @classmethod
    def alone(cls, key: str) -> Lease:
        """A replica without a fleet builds every key it misses: nobody to ask."""
        return cls(None, key, held=False)

    async def _renew(self) -> None:
        """Until released: the build (its queue wait included) may take longer than one
        lease, and the build itself is killed at its deadline. A replica that dies, or
        loses Redis, stops renewing, and the lease lapses within LEASE_S."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            if self.tier is not None:
                await self.tier.renew(self.key)

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        if self.held and self.tier is not None:
            await self.tier.release(self.key)
