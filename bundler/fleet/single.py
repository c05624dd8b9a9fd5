"""A replica without Redis: a fleet of one. Every shared look-up misses, every lease is
this replica's at once, nothing is written; the popularity is the replica's own
(bundler.combos). The service and its parts use it exactly as they use RedisFleet."""

from __future__ import annotations

from typing import Any

from bundler.fleet.lease import Lease
from bundler.tiers.base import NoTier


class NoFleet(NoTier):
    shares = False
    up = False

    async def acquire(self, key: str) -> Lease | None:
        return Lease.alone(key)

    async def wait_landed(self, key: str) -> None:
        return None

    async def get_raw(self, name: str) -> bytes | None:
        return None

    async def put_raw(self, name: str, value: bytes) -> None:
        return None

    async def delete_raw(self, name: str) -> None:
        return None

    async def get_sealed(self, name: str) -> bytes | None:
        return None

    async def put_sealed(self, name: str, value: bytes) -> None:
        return None

    def record(self, modules: tuple[str, ...]) -> None:
        return None

    async def top_combos(self, n: int) -> list[dict[str, Any]] | None:
        return None

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {"bundler_shared_up": 0.0, "bundler_shared_state": {}, "bundler_shared_lookups": {}}
