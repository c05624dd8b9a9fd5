"""The fleet's popularity: each replica adds its requests' counts to one sorted set every
few seconds (trimmed to a bound), so /combos, the warm-up and the fallback's choice see
every replica's traffic; when Redis cannot be asked, the counts wait for the next try."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from bundler.fleet.client import RedisFleet

# Popularity counts are sent this often, and the fleet's set is trimmed to this many.
COMBOS_FLUSH_S = 2.0
MAX_COMBOS = 5000


class FleetPopularity:
    def __init__(self, tier: RedisFleet) -> None:
        self.tier = tier
        self._counts: collections.Counter[str] = collections.Counter()
        self._flushing = asyncio.Lock()

    def record(self, modules: tuple[str, ...]) -> None:
        self._counts[",".join(modules)] += 1

    async def flush_every(self) -> None:
        while True:
            await asyncio.sleep(COMBOS_FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        """Sends the counts gathered since the last flush (after any flush under way)."""
        async with self._flushing:
            await self._flush_now()

    async def _flush_now(self) -> None:
        counts, self._counts = self._counts, collections.Counter()
        if not counts:
            return
        redis, key = self.tier.redis, self.tier.keys.combos

        async def send() -> bool:
            async with redis.pipeline(transaction=False) as pipe:
                for member, count in counts.items():
                    pipe.zincrby(key, count, member)
                pipe.zremrangebyrank(key, 0, -(MAX_COMBOS + 1))
                await pipe.execute()
            return True

        if await self.tier.ask("combos", send) is None:
            self._counts.update(counts)  # kept for the next try (bounded by the sketch's view)
            if len(self._counts) > MAX_COMBOS:
                self._counts = collections.Counter(dict(self._counts.most_common(MAX_COMBOS)))

    async def top(self, n: int) -> list[dict[str, Any]] | None:
        await self.flush()
        redis, key = self.tier.redis, self.tier.keys.combos
        rows = await self.tier.ask(
            "combos", lambda: redis.zrevrange(key, 0, n - 1, withscores=True)
        )
        if rows is None:
            return None
        pairs = cast(list[tuple[bytes, float]], rows)
        return [
            {"modules": member.decode().split(","), "count": int(score)} for member, score in pairs
        ]
