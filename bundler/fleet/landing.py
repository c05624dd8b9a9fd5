"""The landing channel: a replica waiting for another's lease is woken the moment the
bundle lands (its key published on one channel, one subscription per replica), or when
the lease lapses, or Redis is lost: it then looks again, and takes the lease if free."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from bundler.fleet.client import RedisFleet

# The subscription reads with this timeout (None back when nothing landed).
LISTEN_POLL_S = 30.0


class LandingChannel:
    def __init__(self, fleet: RedisFleet) -> None:
        self.fleet = fleet
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def wait(self, key: str) -> None:
        """Returns when ``key``'s bundle lands, its lease lapses, or Redis is lost: the
        caller then looks again (and takes the lease if it is free)."""
        if not await self._listen():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            # It may have landed between our look and the subscription.
            exists = await self.fleet.ask(
                "exists", lambda: self.fleet.redis.exists(self.fleet.keys.bundle(key))
            )
            if exists or not self.fleet.up:
                return
            ttl_ms = await self.fleet.ask(
                "pttl", lambda: self.fleet.redis.pttl(self.fleet.keys.lease(key))
            )
            if ttl_ms is None or ttl_ms < 0:
                return  # lapsed already (or Redis lost)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), ttl_ms / 1000 + 0.05)
        finally:
            waiters = self._waiters.get(key, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(key, None)

    async def _listen(self) -> bool:
        """One subscription to the landing messages per replica, started on first need."""
        if self._listener is None or self._listener.done():
            if self.fleet.resting():
                return False
            self._listening.clear()
            self._listener = asyncio.create_task(self._listen_loop(), name="shared-landed")
        try:
            async with asyncio.timeout(self.fleet.timeout_s * 2):
                await self._listening.wait()
        except TimeoutError:
            return False
        return True

    async def _listen_loop(self) -> None:
        pubsub = self.fleet.redis.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self.fleet.timeout_s * 2):
                await pubsub.subscribe(self.fleet.keys.landed)
            self._listening.set()
            while True:
                # Not block=True: that read would end at the socket timeout.
                message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                if message is None:
                    continue
                key = message["data"].decode()
                for waiter in self._waiters.get(key, []):
                    if not waiter.done():
                        waiter.set_result(None)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            self.fleet.failed("subscribe", exc)
        finally:
            self._listening.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def wake_all(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
