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
    """``size`` slots. A ticket (a future) is queued by priority and resolves True when
    its slot is granted, or False when a batch took its work along (``claim``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        # A queued ticket's priority now: a heap entry of another priority is stale.
        self._priority: dict[asyncio.Future[bool], int] = {}
        self._order = itertools.count()

    @property
    def queued(self) -> int:
        return len({id(f) for _, _, f in self._waiters if not f.done()})

    def _free_for(self, priority: int) -> bool:
        """Warm-up work never takes the last free slot (of two or more): a page's build
        arriving now starts at once instead of waiting behind a batch of warm-ups."""
        limit = self.size - 1 if priority >= Priority.WARM and self.size > 1 else self.size
        return self.in_use < limit

    def enqueue(self, priority: Priority) -> asyncio.Future[bool]:
        ticket: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._priority[ticket] = int(priority)
        heapq.heappush(self._waiters, (int(priority), next(self._order), ticket))
        self._dispatch()  # granted at once if it is the most urgent and a slot is free
        return ticket

    def move(self, ticket: asyncio.Future[bool], priority: Priority) -> None:
        """A queued ticket moves to ``priority``, up or down (its old place is skipped
        when reached)."""
        if not ticket.done() and self._priority.get(ticket) != priority:
            self._priority[ticket] = int(priority)
            heapq.heappush(self._waiters, (int(priority), next(self._order), ticket))
            self._dispatch()

    @staticmethod
    def claim(ticket: asyncio.Future[bool]) -> bool:
        """Take a queued ticket out of the queue: it will never hold a slot."""
        if ticket.done():
            return False
        ticket.set_result(False)
        return True

    def abandon(self, ticket: asyncio.Future[bool]) -> None:
        """Its holder gives up (cancelled): a slot granted meanwhile passes on."""
        if ticket.done() and not ticket.cancelled() and ticket.result():
            self.release()
        else:
            ticket.cancel()

    @asynccontextmanager
    async def slot(self, priority: Priority) -> AsyncIterator[None]:
        ticket = self.enqueue(priority)
        try:
            await ticket  # the releaser counted us in before waking us
        except asyncio.CancelledError:
            self.abandon(ticket)  # granted and cancelled in the same breath: pass it on
            raise
        try:
            yield
        finally:
            self.release()

    def release(self) -> None:
        self.in_use -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Free slots go to the most urgent waiters (FIFO within a priority)."""
        while self._waiters:
            priority, _, waiter = self._waiters[0]
            if waiter.done():  # claimed by a batch, or cancelled
                heapq.heappop(self._waiters)
                self._priority.pop(waiter, None)
                continue
            if self._priority.get(waiter) != priority:  # moved: its other entry counts
                heapq.heappop(self._waiters)
                continue
            if not self._free_for(priority):
                return  # no slot, or only warm-ups wait and the last slot is not theirs
            heapq.heappop(self._waiters)
            del self._priority[waiter]
            self.in_use += 1
            waiter.set_result(True)  # the slot passes straight to it
