"""The build pool's admission: bounded, most urgent first, FIFO within a priority."""

from __future__ import annotations

import asyncio

from bundler.slots import Priority, PrioritySlots


async def test_fallback_jumps_ahead_of_queued_tailored_builds() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def job(name: str, priority: Priority) -> None:
        async with slots.slot(priority):
            order.append(name)
            if name == "running":
                await release.wait()

    tasks = [asyncio.create_task(job("running", Priority.TAILORED))]
    await asyncio.sleep(0)
    for name, priority in (
        ("t1", Priority.TAILORED),
        ("warm", Priority.WARM),
        ("t2", Priority.TAILORED),
        ("fallback", Priority.FALLBACK),
    ):
        tasks.append(asyncio.create_task(job(name, priority)))
        await asyncio.sleep(0)
    assert slots.queued == 4
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["running", "fallback", "t1", "t2", "warm"]
    assert slots.in_use == 0


async def test_concurrency_is_bounded() -> None:
    slots = PrioritySlots(2)
    active = peak = 0

    async def job() -> None:
        nonlocal active, peak
        async with slots.slot(Priority.TAILORED):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.001)
            active -= 1

    await asyncio.gather(*(job() for _ in range(20)))
    assert peak == 2 and slots.in_use == 0


async def test_cancelled_waiter_gives_up_its_place() -> None:
    slots = PrioritySlots(1)
    release = asyncio.Event()
    ran: list[str] = []

    async def job(name: str) -> None:
        async with slots.slot(Priority.TAILORED):
            ran.append(name)
            await release.wait()

    first = asyncio.create_task(job("first"))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(job("cancelled"))
    last = asyncio.create_task(job("last"))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.gather(first, last)
    assert ran == ["first", "last"]
    assert slots.in_use == 0 and slots.queued == 0
