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


async def test_warm_ups_leave_the_last_slot_to_pages() -> None:
    slots = PrioritySlots(2)
    first_warm = slots.enqueue(Priority.WARM)
    second_warm = slots.enqueue(Priority.WARM)
    assert first_warm.done() and first_warm.result() is True
    assert not second_warm.done()  # one slot is free, but not for a warm-up
    page = slots.enqueue(Priority.TAILORED)
    assert page.done() and page.result() is True  # at once, ahead of the waiting warm-up
    assert slots.in_use == 2
    slots.release()  # the page's build ends: the warm-up may not take the last free slot
    assert not second_warm.done()
    slots.release()  # the first warm-up ends: no slot is busy, so a warm-up may take one
    assert second_warm.done() and slots.in_use == 1
    slots.release()
    assert slots.in_use == 0


async def test_a_promoted_warm_up_takes_a_free_slot_at_once() -> None:
    slots = PrioritySlots(2)
    slots.enqueue(Priority.WARM)
    waiting = slots.enqueue(Priority.WARM)
    assert not waiting.done()
    slots.move(waiting, Priority.UNCOVERED)  # a page now waits for this build
    assert waiting.done() and slots.in_use == 2


async def test_a_ticket_moved_down_waits_behind_the_ones_now_more_urgent() -> None:
    """A build that went first because its page had no other answer goes back among the
    others when a fallback now covers that page (its old place must not count)."""
    slots = PrioritySlots(1)
    slots.enqueue(Priority.TAILORED)  # holds the only slot
    was_urgent = slots.enqueue(Priority.UNCOVERED)
    other = slots.enqueue(Priority.TAILORED)
    uncovered = slots.enqueue(Priority.UNCOVERED)
    slots.move(was_urgent, Priority.TAILORED)
    slots.release()
    assert uncovered.done() and not was_urgent.done() and not other.done()
    slots.release()
    assert other.done() and not was_urgent.done()  # FIFO within TAILORED: it moved last
    slots.release()
    assert was_urgent.done()
