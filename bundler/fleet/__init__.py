"""A fleet of replicas sharing one Redis: the client with its link states (client), every
key it writes (keys), the lease that makes one build per key (lease, builds), and the
fleet's popularity (popularity). A replica without Redis is a fleet of one (single):
the same interface, doing nothing, so no caller checks whether there is a fleet.

Importing this package does not import redis-py (7 MiB of RSS): only client does.
"""

from __future__ import annotations

from typing import Any, Protocol

from bundler.bundle import Bundle
from bundler.fleet.lease import Lease


class Fleet(Protocol):
    """What the service asks of its fleet (client.RedisFleet, or single.NoFleet). It is
    also the shared cache tier (tiers.base.BundleTier): get, put, entries, stored_bytes,
    start, close."""

    shares: bool  # False: a fleet of one (nothing it is given goes anywhere)
    up: bool

    async def get(self, key: str) -> Bundle | None: ...

    async def put(self, bundle: Bundle) -> None: ...

    def entries(self) -> int | None: ...

    def stored_bytes(self) -> int | None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, key: str) -> Lease | None: ...

    async def wait_landed(self, key: str) -> None: ...

    async def get_raw(self, name: str) -> bytes | None: ...

    async def put_raw(self, name: str, value: bytes) -> None: ...

    async def delete_raw(self, name: str) -> None: ...

    async def get_sealed(self, name: str) -> bytes | None: ...

    async def put_sealed(self, name: str, value: bytes) -> None: ...

    def record(self, modules: tuple[str, ...]) -> None: ...

    async def top_combos(self, n: int) -> list[dict[str, Any]] | None: ...

    def metric_values(self) -> dict[str, float | dict[str, float]]: ...
