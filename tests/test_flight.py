"""SingleFlight: one run per key, outcomes handed to waiters one loop iteration apart."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bundler.flight import SingleFlight


class LoopTicks:
    """Counts event-loop iterations: a callback that re-schedules itself once per iteration."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def __enter__(self) -> LoopTicks:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.cancel()


async def test_one_run_many_waiters_fifo_one_iteration_apart() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    woke: list[tuple[int, int]] = []

    async def waiter(i: int, ticks: LoopTicks) -> None:
        assert await flight.do("k", work) == 42
        woke.append((i, ticks.count))

    with LoopTicks() as ticks:
        tasks = [asyncio.create_task(waiter(i, ticks)) for i in range(50)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(*tasks)
    assert runs == 1
    assert [i for i, _ in woke] == list(range(50))
    iterations = [tick for _, tick in woke]
    assert all(b > a for a, b in itertools.pairwise(iterations)), iterations
    assert "k" not in flight


async def test_errors_reach_every_waiter() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("pull failed")

    results = await asyncio.gather(
        *(flight.do("k", fail) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) and str(r) == "pull failed" for r in results)


async def test_cancelled_waiter_does_not_cancel_the_work_or_others() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    finished = asyncio.Event()

    async def work() -> str:
        await asyncio.sleep(0.05)
        finished.set()
        return "done"

    first = asyncio.create_task(flight.do("k", work))
    second = asyncio.create_task(flight.do("k", work))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "done"
    assert finished.is_set()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_new_call_after_completion_runs_again() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        return runs

    assert await flight.do("k", work) == 1
    assert await flight.do("k", work) == 2


HOLD_S = 0.01


class NaiveFlight:
    """The incident's shape: one shared future; every waiter resumes in the same iteration."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    async def do(self, key: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        if key not in self._futures:
            self._futures[key] = asyncio.ensure_future(fn())
        return await asyncio.shield(self._futures[key])


def probe_in_thread(
    port: int, warm: threading.Event, go: threading.Event, out: list[float]
) -> threading.Thread:
    """Like kubelet: one kept-alive connection, warmed first, then the timed probe."""

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            warm.set()
            go.wait()
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            out.append(time.perf_counter() - started)
        finally:
            conn.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def probe_latency_while_waiters_wake(aiohttp_server: Any, flight: Any) -> float:
    """200 waiters each do 5 ms of blocking work on waking; how long does /healthz wait?"""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    server = await aiohttp_server(app)
    release = asyncio.Event()

    async def pull() -> str:
        await release.wait()
        return "source"

    async def waiter() -> None:
        await flight.do("1.4.2", pull)
        time.sleep(0.005)  # what a woken request does before it yields again

    tasks = [asyncio.create_task(waiter()) for _ in range(200)]
    await asyncio.sleep(0.05)
    warm, go, latencies = threading.Event(), threading.Event(), []
    thread = probe_in_thread(server.port, warm, go, latencies)
    while not warm.is_set():
        await asyncio.sleep(0.005)
    go.set()
    # Hold the loop (blocking) while the probe connects and sends, so its request is
    # waiting in the socket exactly when the result lands. Its latency includes this.
    time.sleep(HOLD_S)
    release.set()
    await asyncio.gather(*tasks)
    while thread.is_alive():
        await asyncio.sleep(0.01)
    return latencies[0]


async def test_probe_is_answered_between_waiters(aiohttp_server: Any) -> None:
    latency = await probe_latency_while_waiters_wake(aiohttp_server, SingleFlight())
    print(f"staggered release: probe answered in {latency * 1000:.1f} ms")
    assert latency < 0.05, f"probe waited {latency * 1000:.0f} ms"


async def test_control_naive_shared_future_starves_the_probe(aiohttp_server: Any) -> None:
    latency = await probe_latency_while_waiters_wake(aiohttp_server, NaiveFlight())
    print(f"naive shared future: probe answered in {latency * 1000:.1f} ms")
    # All 200 x 5 ms run in one iteration before the probe is read: about 1 s.
    assert latency > 0.8, f"probe waited only {latency * 1000:.0f} ms"
