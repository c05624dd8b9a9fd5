"""What one client may spend: cold builds, and requests.

A cold build costs milliseconds of CPU, a hit microseconds; a client that asks for
thousands of distinct combinations spends builds everyone else needs and fills the
caches with bundles nobody else asks for. Each client (bundler.clients) has two token
buckets: builds (``--client-builds-per-s``, ``--client-build-burst``) and requests
(``--client-requests-per-s``, twice that as burst). A token bucket, not fair queueing:
fair queueing reorders the queue, but the flood's builds would still all run, spending
the CPUs and filling the tiers; a bucket caps what a client can spend at all, costs a
dictionary look-up, and leaves a client under its rate untouched. Past its build budget
a client's misses start no build (its pages get the fallback where it covers them, else
a 429), so they can never delay another client's build; joining a build under way or a
cache hit costs no build token.

A client is logged once when it starts being limited and once when it has not been for
QUIET_S; ``bundler_limited_total{reason}`` counts the answers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from cachetools import LRUCache

logger = logging.getLogger(__name__)

# Clients whose buckets are kept; the least recently seen beyond it start afresh (full).
MAX_CLIENTS = 65536
# A limited client is reported as no longer limited after this long without a limit.
QUIET_S = 10.0
REQUEST_BURST_FACTOR = 2.0


class Bucket:
    """``rate`` tokens a second up to ``burst``; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0 if a token was taken; else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class ClientLimits:
    def __init__(self, requests_per_s: float, builds_per_s: float, build_burst: float) -> None:
        self.requests_per_s = requests_per_s  # 0: no limit
        self.builds_per_s = builds_per_s
        self.build_burst = max(1.0, build_burst)
        self._requests: LRUCache[str, Bucket] = LRUCache(maxsize=MAX_CLIENTS)
        self._builds: LRUCache[str, Bucket] = LRUCache(maxsize=MAX_CLIENTS)
        self.limited: collections.Counter[str] = collections.Counter()  # answers, by reason
        # client -> (reason, when it was last limited, answers limited since it started)
        self._now_limited: dict[str, tuple[str, float, int]] = {}
        self._watch: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.requests_per_s > 0 or self.builds_per_s > 0

    def request(self, client: str) -> float:
        """0: the request may go on; else the seconds its client should wait."""
        if self.requests_per_s <= 0:
            return 0.0
        rate = self.requests_per_s
        return self._take(self._requests, client, rate, rate * REQUEST_BURST_FACTOR, "requests")

    def build(self, client: str) -> float:
        """0: the client may start a cold build; else the seconds until it may."""
        if self.builds_per_s <= 0:
            return 0.0
        return self._take(self._builds, client, self.builds_per_s, self.build_burst, "builds")

    def _take(
        self, buckets: LRUCache[str, Bucket], client: str, rate: float, burst: float, reason: str
    ) -> float:
        now = time.monotonic()
        bucket = buckets.get(client)
        if bucket is None:
            bucket = buckets[client] = Bucket(rate, burst, now)
        wait_s = bucket.take(now)
        if wait_s:
            self._limit(client, reason, now)
        return wait_s

    def _limit(self, client: str, reason: str, now: float) -> None:
        self.limited[reason] += 1
        state = self._now_limited.get(client)
        if state is None:
            logger.warning("client limited", extra={"client": client, "reason": reason})
            self._now_limited[client] = (reason, now, 1)
        else:
            self._now_limited[client] = (state[0], now, state[2] + 1)

    def release_quiet(self, now: float | None = None) -> list[str]:
        """Clients not limited for QUIET_S are logged as no longer limited."""
        now = time.monotonic() if now is None else now
        quiet = [c for c, (_, last, _) in self._now_limited.items() if now - last >= QUIET_S]
        for client in quiet:
            reason, _, answers = self._now_limited.pop(client)
            logger.info(
                "client no longer limited",
                extra={"client": client, "reason": reason, "limited_answers": answers},
            )
        return quiet

    def start(self) -> None:
        if self.enabled:
            self._watch = asyncio.create_task(self._watch_quiet(), name="client-limits")

    async def _watch_quiet(self) -> None:
        while True:
            await asyncio.sleep(QUIET_S / 2)
            self.release_quiet()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {
            "bundler_limited": {
                reason: float(self.limited[reason]) for reason in ("requests", "builds")
            },
            "bundler_clients_limited": float(len(self._now_limited)),
        }
