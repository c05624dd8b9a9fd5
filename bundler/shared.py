"""The shared tier: replicas share built bundles, one build per key, and their popularity,
through Redis (redis-py's asyncio client, the plain protocol).

- Bundles: ``<prefix>b:<key>`` holds the disk tier's entry format (every part's length
  and SHA-256, verified on read: a corrupt or truncated value is a miss, deleted, never
  served), with a TTL; Redis is expected to run with ``maxmemory`` and an LRU policy.
  Source maps (``<prefix>m:<key>:<code digest>``, their SHA-256 in front) and fallbacks
  (``<prefix>fb:...``, each part's length and SHA-256) are verified the same way.
- One build per key across the fleet: a replica about to build takes the lease
  ``<prefix>lease:<key>`` (SET NX, a few seconds, renewed until its build is done; the
  build itself has its deadline). Another replica that finds it taken waits for the bundle to land,
  woken by a message on ``<prefix>landed`` (one subscription per replica), or for the
  lease to lapse (its holder died or lost Redis), and then takes it itself.
- Popularity: each replica adds its requests' counts to the sorted set
  ``<prefix>combos`` every few seconds (trimmed to a bound), so /combos is the fleet's.

Redis is never a single point of failure. Every operation gives up after
``timeout_s``. A refused connection marks the tier down at once (one log line, a gauge);
timeouts in a row do once a PING with time to spare fails too (a replica too busy to read
Redis's answers in time is not an outage: the whole fleet would build on its own). For
``RETRY_S`` after that nothing is asked of Redis at all, so requests do not keep paying the
timeout; the local tiers carry on, and a waiter on another's lease builds itself.
Readiness never looks at Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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

from bundler.cache import Bundle
from bundler.disk import CorruptEntry, decode_entry, encode_entry

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After this many timeouts in a row, Redis is asked for a PING with CONFIRM_TIMEOUT_S to
# spare; it is taken for down if that fails too (a refused connection at once), and then
# left alone for RETRY_S (then tried again).
FAILURES_TO_DOWN = 3
CONFIRM_TIMEOUT_S = 0.5
# The landing subscription reads with this timeout (None back when nothing landed).
LISTEN_POLL_S = 30.0
MAX_CONNECTIONS = 32
# What no request waits on (writing a bundle, renewing or releasing a lease) may take longer.
BACKGROUND_TIMEOUT_S = 1.0
CONNECT_TIMEOUT_S = 1.0
RETRY_S = 1.0
# A lease lapses this long after its last renewal: a replica that died, or cannot reach
# Redis any more, holds nobody up for longer.
LEASE_S = 3.0
RENEW_EVERY_S = 1.0
# Popularity counts are sent this often, and the fleet's set is trimmed to this many.
COMBOS_FLUSH_S = 2.0
MAX_COMBOS = 5000
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


def seal(value: bytes) -> bytes:
    """``value`` behind its SHA-256, so that a reader can tell it whole."""
    return hashlib.sha256(value).digest() + value


def unseal(raw: bytes) -> bytes | None:
    """The value ``seal`` wrapped, or None if it is not whole."""
    digest, value = raw[:32], raw[32:]
    return value if len(digest) == 32 and hashlib.sha256(value).digest() == digest else None


class Lease:
    """This replica's right to build one key (``held=False``: Redis could not be asked,
    so it builds without one, as a replica without Redis would)."""

    def __init__(self, tier: SharedTier, key: str, held: bool) -> None:
        self.tier = tier
        self.key = key
        self.held = held
        self._renewing: asyncio.Task[None] | None = None
        if held:
            self._renewing = asyncio.create_task(self._renew(), name=f"lease:{key}")

    async def _renew(self) -> None:
        """Until released: the build (its queue wait included) may take longer than one
        lease, and the build itself is killed at its deadline. A replica that dies, or
        loses Redis, stops renewing, and the lease lapses within LEASE_S."""
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            await self.tier.renew(self.key)

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        if self.held:
            await self.tier.release(self.key)


class SharedTier:
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
        self.lag = lag  # the event loop's current lag, seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.up = True
        self._down_until = 0.0
        self._failures = 0  # in a row
        self.results: collections.Counter[str] = collections.Counter()
        self.state_changes = 0
        self._renew = self.redis.register_script(RENEW)
        self._release = self.redis.register_script(RELEASE)
        self._landed: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._counts: collections.Counter[str] = collections.Counter()
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._confirming: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ every operation

    async def _do(
        self, what: str, op: Callable[[], Awaitable[T]], timeout_s: float | None = None
    ) -> T | None:
        """``op``'s result, or None when Redis is down or does not answer in time (a
        request waits on it: ``timeout_s``, the setting; nobody does: longer)."""
        if not self.up and time.monotonic() < self._down_until:
            return None
        try:
            # Redis gets its time of its own: a busy event loop's lag is not charged to it.
            async with asyncio.timeout((timeout_s or self.timeout_s) + self.lag()):
                result = await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(what, exc)
            return None
        self._failures = 0
        if not self.up:
            self.up = True
            self.state_changes += 1
            logger.warning("shared tier (Redis) reachable again")
        return result

    @property
    def deciding(self) -> bool:
        """Timeouts in a row are being checked against a PING (up or down, soon)."""
        return self._confirming is not None

    def _failed(self, what: str, exc: BaseException) -> None:
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
        self._wake_all()

    # ------------------------------------------------------------ bundles

    def _bundle_key(self, key: str) -> str:
        return f"{self.prefix}b:{key}"

    async def get(self, key: str) -> Bundle | None:
        raw = cast(
            bytes | None, await self._do("get", lambda: self.redis.get(self._bundle_key(key)))
        )
        if raw is None:
            self.results["miss"] += 1
            return None
        try:
            bundle = await asyncio.to_thread(decode_entry, raw, key)
        except CorruptEntry as exc:
            self.results["corrupt"] += 1
            logger.error("corrupt shared entry; rebuilt", extra={"key": key, "problem": str(exc)})
            await self._do("delete", lambda: self.redis.delete(self._bundle_key(key)))
            return None
        self.results["hit"] += 1
        return bundle

    async def put(self, bundle: Bundle) -> None:
        """Stores the bundle and wakes the replicas waiting for it."""
        raw = await asyncio.to_thread(encode_entry, bundle)

        async def store() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._bundle_key(bundle.key), raw, px=self.ttl_ms)
                pipe.publish(f"{self.prefix}landed", bundle.key)
                await pipe.execute()

        await self._do("put", store, timeout_s=BACKGROUND_TIMEOUT_S)

    async def get_raw(self, name: str) -> bytes | None:
        """A value stored by ``put_raw`` (its reader verifies it)."""
        raw = await self._do("get", lambda: self.redis.get(f"{self.prefix}{name}"))
        return cast(bytes | None, raw)

    async def put_raw(self, name: str, value: bytes) -> None:
        await self._do(
            "put",
            lambda: self.redis.set(f"{self.prefix}{name}", value, px=self.ttl_ms),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def delete_raw(self, name: str) -> None:
        await self._do("delete", lambda: self.redis.delete(f"{self.prefix}{name}"))

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

    def _lease_key(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    async def acquire(self, key: str) -> Lease | None:
        """A lease on ``key`` (held, or not when Redis cannot be asked); None: another
        replica holds it."""
        taken = await self._do(
            "lease",
            lambda: self.redis.set(
                self._lease_key(key), self.owner, nx=True, px=int(LEASE_S * 1000)
            ),
        )
        if taken is None and not self.up:
            return Lease(self, key, held=False)
        if taken:
            return Lease(self, key, held=True)
        return None

    async def renew(self, key: str) -> None:
        await self._do(
            "renew",
            lambda: self._renew(
                keys=[self._lease_key(key)], args=[self.owner, int(LEASE_S * 1000)]
            ),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def release(self, key: str) -> None:
        await self._do(
            "release",
            lambda: self._release(
                keys=[self._lease_key(key), f"{self.prefix}landed"], args=[self.owner, key]
            ),
            timeout_s=BACKGROUND_TIMEOUT_S,
        )

    async def wait_landed(self, key: str) -> None:
        """Returns when ``key``'s bundle lands, its lease lapses, or Redis is lost: the
        caller then looks again (and takes the lease if it is free)."""
        if not await self._listen():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._landed.setdefault(key, []).append(waiter)
        try:
            # It may have landed between our look and the subscription.
            exists = await self._do("exists", lambda: self.redis.exists(self._bundle_key(key)))
            if exists or not self.up:
                return
            ttl_ms = await self._do("pttl", lambda: self.redis.pttl(self._lease_key(key)))
            if ttl_ms is None or ttl_ms < 0:
                return  # lapsed already (or Redis lost)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), ttl_ms / 1000 + 0.05)
        finally:
            waiters = self._landed.get(key, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._landed.pop(key, None)

    async def _listen(self) -> bool:
        """One subscription to the landing messages per replica, started on first need."""
        if self._listener is None or self._listener.done():
            if not self.up and time.monotonic() < self._down_until:
                return False
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen_loop(), name="shared-landed")
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await self._listening.wait()
        except TimeoutError:
            return False
        return True

    async def _listen_loop(self) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.timeout_s * 2):
                await pubsub.subscribe(f"{self.prefix}landed")
            self._listening.set()
            while True:
                # Not block=True: that read would end at the socket timeout.
                message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                if message is None:
                    continue
                key = message["data"].decode()
                for waiter in self._landed.get(key, []):
                    if not waiter.done():
                        waiter.set_result(None)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("subscribe", exc)
        finally:
            self._listening.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _wake_all(self) -> None:
        for waiters in self._landed.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------ popularity

    def record(self, modules: tuple[str, ...]) -> None:
        self._counts[",".join(modules)] += 1

    async def _flush_combos(self) -> None:
        while True:
            await asyncio.sleep(COMBOS_FLUSH_S)
            await self.flush_combos()

    async def flush_combos(self) -> None:
        """Sends the counts gathered since the last flush (after any flush under way)."""
        async with self._flushing:
            await self._flush_combos_now()

    async def _flush_combos_now(self) -> None:
        counts, self._counts = self._counts, collections.Counter()
        if not counts:
            return

        async def send() -> bool:
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, count in counts.items():
                    pipe.zincrby(f"{self.prefix}combos", count, member)
                pipe.zremrangebyrank(f"{self.prefix}combos", 0, -(MAX_COMBOS + 1))
                await pipe.execute()
            return True

        if await self._do("combos", send) is None:
            self._counts.update(counts)  # kept for the next try (bounded by the sketch's view)
            if len(self._counts) > MAX_COMBOS:
                self._counts = collections.Counter(dict(self._counts.most_common(MAX_COMBOS)))

    async def top_combos(self, n: int) -> list[dict[str, Any]] | None:
        """The fleet's most requested lists (None: Redis down, use the local sketch)."""
        await self.flush_combos()
        rows = await self._do(
            "combos",
            lambda: self.redis.zrevrange(f"{self.prefix}combos", 0, n - 1, withscores=True),
        )
        if rows is None:
            return None
        pairs = cast(list[tuple[bytes, float]], rows)
        return [
            {"modules": member.decode().split(","), "count": int(score)} for member, score in pairs
        ]

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_combos(), name="shared-combos")
        await self._do("ping", self.redis.ping)

    async def close(self) -> None:
        for task in (self._flusher, self._listener, self._confirming):
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
