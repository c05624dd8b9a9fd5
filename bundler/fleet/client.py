"""The shared tier: replicas share built bundles, one build per key, and their popularity,
through Redis (redis-py's asyncio client, the plain protocol). Every key is named in
bundler.fleet.keys, leases live in bundler.fleet.lease, popularity in
bundler.fleet.popularity.

Every value is verified on read (each part's length and SHA-256): a corrupt or truncated
one is a miss, deleted, never served. Values have a TTL; Redis is expected to run with
``maxmemory`` and an LRU policy. A replica waiting for another's lease is woken by a
message on the landing channel (one subscription per replica), or by the lease lapsing.

Redis is never a single point of failure (Link says how this replica sees it). Every
operation gives up after ``timeout_s``; nothing is asked of a Redis taken for down for
``RETRY_S``, so requests do not keep paying the timeout; the local tiers carry on, and a
waiter on another's lease builds itself. Readiness never looks at Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import hashlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from bundler.bundle import Bundle
from bundler.fleet.keys import Keys
from bundler.fleet.landing import LandingChannel
from bundler.fleet.lease import LEASE_S, RELEASE, RENEW, Lease
from bundler.fleet.popularity import FleetPopularity
from bundler.tiers.disk import CorruptEntry, decode_entry, encode_entry

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After this many timeouts in a row, Redis is asked for a PING with CONFIRM_TIMEOUT_S to
# spare; it is taken for down if that fails too (a refused connection at once), and then
# left alone for RETRY_S (then tried again).
FAILURES_TO_DOWN = 3
CONFIRM_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 32
# What no request waits on (writing a bundle, renewing or releasing a lease) may take longer.
BACKGROUND_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 1.0
RETRY_S = 1.0


def seal(value: bytes) -> bytes:
    """``value`` behind its SHA-256, so that a reader can tell it whole."""
    return hashlib.sha256(value).digest() + value


def unseal(raw: bytes) -> bytes | None:
    """The value ``seal`` wrapped, or None if it is not whole."""
    digest, value = raw[:32], raw[32:]
    return value if len(digest) == 32 and hashlib.sha256(value).digest() == digest else None


class Link(enum.Enum):
    """How this replica sees Redis. UP: every operation is asked (each with its own
    timeout). DECIDING: timeouts came in a row; operations are still asked while a PING
    with time to spare tells a hung Redis from a replica too busy to read its answers.
    DOWN: refused, or the PING failed; nothing is asked for RETRY_S, then the next
    operation tries again, and its success makes it UP."""

    UP = "up"
    DECIDING = "deciding"
    DOWN = "down"


class RedisFleet:
    shares = True

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        ttl_s: float,
        prefix: str = "bundler:",
        lag: Callable[[], float] = lambda: 0.0,
    ) -> None:
        # A bounded pool of connections, made once and reused: under a storm, hundreds of
        # operations at once would otherwise each open one (and time out connecting).
        # Each operation's own deadline is the timeout around it (_do).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=30,
            # Nothing waits longer than this for an answer or a free connection, whatever
            # its own deadline (a half-dead connection ends here, not at TCP's timeouts).
            socket_timeout=BACKGROUND_TIMEOUT_S,
            timeout=BACKGROUND_TIMEOUT_S,
        )
        self.redis = aioredis.Redis(connection_pool=pool)
        self.timeout_s = timeout_s
        self.ttl_ms = int(ttl_s * 1000)
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.lag = lag  # the event loop's current lag, seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.up = True
        self._down_until = 0.0
        self._failures = 0  # in a row
        self.results: collections.Counter[str] = collections.Counter()
        self.state_changes = 0
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self.landing = LandingChannel(self)
        self.popularity = FleetPopularity(self)
        self._flusher: asyncio.Task[None] | None = None
        self._confirming: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ every operation

    async def ask(
        self, what: str, op: Callable[[], Awaitable[T]], timeout_s: float | None = None
    ) -> T | None:
        """``op``'s result, or None when Redis is down or does not answer in time (a
        request waits on it: ``timeout_s``, the setting; nobody does: longer)."""
        if self.resting():
            return None
        try:
            # Redis gets its time of its own: a busy event loop's lag is not charged to it.
            async with asyncio.timeout((timeout_s or self.timeout_s) + self.lag()):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self.failed(what, exc)
            return None
        self._failures = 0
        if not self.up:
            self.up = True
            self.state_changes += 1
            logger.warning("shared tier (Redis) reachable again")
        return result

    def resting(self) -> bool:
        """Taken for down less than RETRY_S ago: nothing is asked of it."""
        return not self.up and time.monotonic() < self._down_until

    @property
    def deciding(self) -> bool:
        """Timeouts in a row are being checked against a PING (up or down, soon)."""
        return self._confirming is not None

    @property
    def state(self) -> Link:
        if not self.up:
            return Link.DOWN
        return Link.DECIDING if self._confirming is not None else Link.UP

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        now = self.state  # 1 for the state it is in, 0 for the others
        return {
            "bundler_shared_up": float(self.up),
            "bundler_shared_state": {link.value: float(link is now) for link in Link},
            "bundler_shared_lookups": dict(self.results),
        }

    def failed(self, what: str, exc: BaseException) -> None:
        self.results["error"] += 1
        self._failures += 1
        refused = isinstance(exc, (RedisConnectionError, ConnectionError)) and not isinstance(
            exc, TimeoutError
        )
        if refused:
            self._down(what, exc)
        elif self._failures >= FAILURES_TO_DOWN and self._confirming is None:
            # Timeouts in a row: Redis hangs, or this replica is too busy to read its
            # answers in time (a storm on few CPUs). Only a PING given time to spare
            # tells them apart; meanwhile each operation keeps its own short timeout.
            self._confirming = asyncio.ensure_future(self._confirm(what))

    async def _confirm(self, what: str) -> None:
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_S + self.lag()):
                await self.redis.ping()
        except (RedisError, OSError, TimeoutError) as error:
            self._down(what, error)
        else:
            self._failures = 0
            self.results["busy"] += 1  # timeouts, yet Redis answers: not an outage
        finally:
            self._confirming = None

    def _down(self, what: str, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_S
        if self.up:
            self.up = False
            self.state_changes += 1
            logger.error(
                "shared tier (Redis) unreachable; serving from the local tiers",
                extra={"operation": what, "error": repr(exc)[:300]},
            )
        self.landing.wake_all()

    # ------------------------------------------------------------ bundles (a BundleTier)

    def entries(self) -> int | None:
        return None  # shared by the fleet, bounded by Redis's maxmemory: not ours to count

    def stored_bytes(self) -> int | None:
        return None

    async def get(self, key: str) -> Bundle | None:
        raw = cast(
            bytes | None, await self.ask("get", lambda: self.redis.get(self.keys.bundle(key)))
        )
        if raw is None:
            self.results["miss"] += 1
            return None
        try:
            bundle = await asyncio.to_thread(decode_entry, raw, key)
        except CorruptEntry as exc:
            self.results["corrupt"] += 1
            logger.error("corrupt shared entry; rebuilt", extra={"key": key, "problem": str(exc)})
            await self.ask("delete", lambda: self.redis.delete(self.keys.bundle(key)))
            return None
        self.results["hit"] += 1
        return bundle

    async def put(self, bundle: Bundle) -> None:
        """Stores the bundle and wakes the replicas waiting for it."""
        raw = await asyncio.to_thread(encode_entry, bundle)

        async def store() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.bundle(bundle.key), raw, px=self.ttl_ms)
                pipe.publish(self.keys.landed, bundle.key)
                await pipe.execute()

        await self.ask("put", store, timeout_s=BACKGROUND_TIMEOUT_S)

    async def get_raw(self, name: str) -> bytes | None:
        """A value stored by ``put_raw`` (its reader verifies it)."""
        raw = await self.ask("get", lambda: self.redis.get(self.keys.named(name)))
        return cast(bytes | None, raw)

    async def put_raw(self, name: str, value: bytes) -> None:
        await self.ask(
            "put",
            lambda: self.redis.set(self.keys.named(name), value, px=self.ttl_ms),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def delete_raw(self, name: str) -> None:
        await self.ask("delete", lambda: self.redis.delete(self.keys.named(name)))

    async def get_sealed(self, name: str) -> bytes | None:
        """A value stored by ``put_sealed``, if whole (its SHA-256); a corrupt or
        truncated one is deleted and taken for a miss."""
        raw = await self.get_raw(name)
        if raw is None:
            self.results["miss"] += 1
            return None
        value = await asyncio.to_thread(unseal, raw)  # a map can be megabytes
        if value is None:
            self.results["corrupt"] += 1
            logger.error("corrupt shared value; made again", extra={"shared_name": name})
            await self.delete_raw(name)
            return None
        self.results["hit"] += 1
        return value

    async def put_sealed(self, name: str, value: bytes) -> None:
        await self.put_raw(name, await asyncio.to_thread(seal, value))

    # ------------------------------------------------------------ leases

    async def acquire(self, key: str) -> Lease | None:
        """A lease on ``key`` (held, or not when Redis cannot be asked); None: another
        replica holds it."""
        taken = await self.ask(
            "lease",
            lambda: self.redis.set(
                self.keys.lease(key), self.owner, nx=True, px=int(LEASE_S * 1000)
            ),
        )
        if taken is None and not self.up:
            return Lease(self, key, held=False)
        if taken:
            return Lease(self, key, held=True)
        return None

    async def renew(self, key: str) -> None:
        await self.ask(
            "renew",
            lambda: self._renew(
                keys=[self.keys.lease(key)], args=[self.owner, int(LEASE_S * 1000)]
            ),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def release(self, key: str) -> None:
        await self.ask(
            "release",
            lambda: self._release(
                keys=[self.keys.lease(key), self.keys.landed], args=[self.owner, key]
            ),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def wait_landed(self, key: str) -> None:
        await self.landing.wait(key)

    # ------------------------------------------------------------ popularity

    def record(self, modules: tuple[str, ...]) -> None:
        self.popularity.record(modules)

    async def flush_combos(self) -> None:
        await self.popularity.flush()

    async def top_combos(self, n: int) -> list[dict[str, Any]] | None:
        """The fleet's most requested lists (None: Redis down, use the local sketch)."""
        return await self.popularity.top(n)

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self.popularity.flush_every(), name="shared-combos")
        await self.ask("ping", self.redis.ping)

    async def close(self) -> None:
        await self.landing.close()
        for task in (self._flusher, self._confirming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(Exception):
            await self.flush_combos()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        with contextlib.suppress(Exception):
            await self.redis.connection_pool.aclose()  # ours: aclose() leaves it open
