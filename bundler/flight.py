"""One task per key, shared by every caller, whose waiters wake one loop iteration apart.

This is the fix for the incident in docs/architecture.md: hundreds of requests
awaited one shared promise; when it settled, all of them resumed in the same
event-loop iteration and the readiness probe waited behind every one. Here the
outcome is handed to waiters one at a time, FIFO, with a yield to the loop in
between, so the selector is polled (and a probe answered) between any two.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Flight(Generic[V]):
    waiters: collections.deque[asyncio.Future[V]] = field(default_factory=collections.deque)
    task: asyncio.Task[None] | None = None


class SingleFlight(Generic[K, V]):
    def __init__(self, name: str = "flight", *, stagger: bool = True) -> None:
        self.name = name
        # stagger=False wakes every waiter in one iteration: the incident's behaviour,
        # kept only so benchmarks can measure it side by side.
        self.stagger = stagger
        self._flights: dict[K, _Flight[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def ensure(self, key: K, fn: Callable[[], Awaitable[V]]) -> None:
        """Start ``fn`` for ``key`` unless it runs already; nobody waits for it here."""
        if key not in self._flights:
            flight = self._flights[key] = _Flight()
            flight.task = asyncio.create_task(self._run(key, flight, fn), name=f"{self.name}:{key}")

    async def do(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        """Run ``fn`` once for ``key`` however many callers ask, and share its outcome.

        A caller that joins while the outcome is being handed out still gets it:
        the flight stays registered until its last waiter is released.
        Cancelling a caller cancels only its wait, never the shared work.
        """
        self.ensure(key, fn)
        flight = self._flights[key]
        waiter: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        flight.waiters.append(waiter)
        return await waiter

    async def _run(self, key: K, flight: _Flight[V], fn: Callable[[], Awaitable[V]]) -> None:
        result: V | None = None
        error: BaseException | None = None
        try:
            result = await fn()
        except asyncio.CancelledError:
            error = asyncio.CancelledError()
        except Exception as exc:
            error = exc
        try:
            while flight.waiters:
                waiter = flight.waiters.popleft()
                if waiter.done():  # its caller was cancelled
                    continue
                if isinstance(error, asyncio.CancelledError):
                    waiter.cancel()
                elif error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(result)  # type: ignore[arg-type]
                if not flight.waiters:
                    break  # the last one: unregister now, so its next call starts afresh
                if not self.stagger:
                    continue
                # The waiter resumes in the next iteration; so does this loop, after it.
                await asyncio.sleep(0)
        finally:
            del self._flights[key]
            for waiter in flight.waiters:  # only if this task itself was cancelled mid-release
                waiter.cancel()

    def fail_waiters(self, error: BaseException) -> int:
        """Answer every waiter with ``error`` now (the shutdown deadline); the work goes on
        until close(). Returns how many were waiting."""
        failed = 0
        for flight in self._flights.values():
            while flight.waiters:
                waiter = flight.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(error)
                    failed += 1
        return failed

    async def close(self) -> None:
        """Cancel every flight (at shutdown); their waiters are cancelled too."""
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
