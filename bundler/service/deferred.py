"""Combinations answered with the fallback without a build (shed: the queue was full or
the loop lagging) are built later, at warm-up priority, while the pool has room: most
recently asked first, never ahead of a page's build, and never never."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable

from bundler.bundle import Bundle
from bundler.flight import SingleFlight
from bundler.slots import Priority
from bundler.spec import BundleSpec

# Remembered to be built later, at most.
MAX_DEFERRED = 1024

Build = Callable[[BundleSpec, Priority], Awaitable[Bundle]]
Settled = Callable[[str], bool]  # the key is built, building, or known to fail


class DeferredBuilds:
    def __init__(self, flight: SingleFlight[str, Bundle], build: Build, room: int) -> None:
        self.flight = flight  # the service's build flight: one build per key
        self._build = build
        self.room = room  # one round of the pool: pool size x batch max
        self._deferred: collections.OrderedDict[str, BundleSpec] = collections.OrderedDict()
        self._running: set[str] = set()
        self._freed = asyncio.Event()  # set whenever a build finishes
        self._drainer: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Deferred builds under way (they never count against a page's admission)."""
        return len(self._running)

    @property
    def pending(self) -> bool:
        """Some are waiting or being built."""
        return bool(self._deferred or self._running)

    def freed(self) -> None:
        """A build finished: there may be room."""
        self._freed.set()

    def defer(self, spec: BundleSpec, settled: Settled) -> None:
        self._deferred[spec.key] = spec
        self._deferred.move_to_end(spec.key)
        while len(self._deferred) > MAX_DEFERRED:
            self._deferred.popitem(last=False)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(settled), name="deferred-builds")

    async def _drain(self, settled: Settled) -> None:
        """Starts deferred builds while fewer than one round of the pool of them are under
        way: a page's build always goes first, and these fill the rest of its batch."""
        while self._deferred:
            if len(self._running) >= self.room:
                self._freed.clear()
                await self._freed.wait()
                continue
            key, spec = self._deferred.popitem(last=True)
            if key in self.flight or settled(key):
                continue
            self._running.add(key)
            self.flight.ensure(key, functools.partial(self._run, spec))

    async def _run(self, spec: BundleSpec) -> Bundle:
        try:
            return await self._build(spec, Priority.WARM)
        finally:
            self._running.discard(spec.key)

    def close(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
