"""Bounded concurrency with priorities: the build pool's admission.

A plain semaphore wakes waiters in arrival order; here a released slot goes to
the most urgent waiter (lowest priority number), FIFO within one priority. The
static fallback of a new version is thus built ahead of every queued tailored
build, a page the fallback cannot serve ahead of one it can, and a warm-up never
delays a page.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Priority(enum.IntEnum):
    FALLBACK = 0
    UNCOVERED = 1  # a tailored build whose requests the fallback cannot answer
    TAILORED = 2
    WARM = 3


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        return sum(1 for _, _, f in self._waiters if not f.done())

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        if self.in_use < self.size and self.queued == 0:
            self.in_use += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (int(priority), next(self._order), waiter))
            try:
                await waiter  # the releaser counted us in before waking us
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release()  # granted and cancelled in the same breath: pass it on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to it
                return
        self.in_use -= 1
