"""Queued builds of one version share one esbuild run, and nothing about a bundle changes.

On a real package (date-fns from npm): every bundle of a batch is byte-for-byte,
map included, the bundle built alone; a build that fails in a batch gets the
error it gets alone while the others are served; a waiter cancelled in the
queue takes nothing with it; a page's request moves a warm-up's queued build up.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, BuildOutput
from bundler.errors import BuildFailed
from bundler.resolve import resolve_modules
from bundler.slots import Priority
from bundler.spec import BuildOptions, BundleSpec
from tests.packages import npm_tarball

OPTIONS = BuildOptions(target="es2018", registry_name="__bundlerModules")
VERSION = "4.1.0"
COMBOS = [
    ("addDays", "format"),
    ("differenceInDays", "isValid", "parseISO"),
    ("format", "locale/de", "startOfWeek"),
    ("addMonths", "endOfMonth", "formatDistance", "subDays"),
    ("eachDayOfInterval", "isWeekend"),
    ("formatISO", "intervalToDuration", "locale/fr"),
]


@pytest.fixture(scope="module")
def date_fns(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("date-fns") / VERSION
    with tarfile.open(fileobj=io.BytesIO(npm_tarball("date-fns", VERSION))) as tar:
        tar.extractall(root.parent, filter="data")
    (root.parent / "package").rename(root)
    return root


def job(
    root: Path,
    modules: tuple[str, ...],
    priority: Priority = Priority.TAILORED,
    *,
    with_map: bool = True,
) -> BuildJob:
    spec = BundleSpec(VERSION, tuple(sorted(modules)), OPTIONS)
    registrations = resolve_modules(root, VERSION, spec.modules)
    return BuildJob.tailored(spec, registrations, priority, with_map=with_map)


def make_builder(esbuild: str, tmp_path: Path, batch_max: int) -> Builder:
    return Builder(
        esbuild,
        tmp_path / "tmp",
        pool_size=1,
        threads_per_build=1,
        timeout_s=30,
        niceness=0,
        batch_max=batch_max,
    )


async def queued_behind_one(
    builder: Builder, root: Path, jobs: list[BuildJob]
) -> list[BuildOutput | BaseException]:
    """``jobs`` queued while the pool's one slot is busy, then built."""
    async with builder.slots.slot(Priority.FALLBACK):  # hold the slot: everything queues
        tasks = [asyncio.ensure_future(builder.build(j, root)) for j in jobs]
        await asyncio.sleep(0.05)
        assert builder.queued == len(jobs)
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_a_batched_bundle_is_the_bundle_built_alone(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    jobs = [job(date_fns, c) for c in COMBOS]
    alone = make_builder(esbuild, tmp_path / "a", batch_max=1)
    expected = await queued_behind_one(alone, date_fns, jobs)
    assert alone.runs == {"single": len(COMBOS)}  # the control: one run per bundle

    batched = make_builder(esbuild, tmp_path / "b", batch_max=16)
    outputs = await queued_behind_one(batched, date_fns, jobs)
    assert batched.runs == {"batch": 1}
    assert batched.results == {"ok": len(COMBOS)}
    for want, got in zip(expected, outputs, strict=True):
        assert isinstance(want, BuildOutput) and isinstance(got, BuildOutput)
        assert got.code == want.code
        assert got.sourcemap == want.sourcemap
    assert b"locale/de" in outputs[2].code
    assert all(isinstance(o, BuildOutput) and o.sourcemap for o in outputs)


async def test_a_bundle_built_without_its_map_is_the_same_code(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    """Tailored bundles are built without a source map, which is made on request by a
    second run: that run must make the very code that was served."""
    builder = make_builder(esbuild, tmp_path, batch_max=16)
    with_maps = await queued_behind_one(builder, date_fns, [job(date_fns, c) for c in COMBOS])
    without = await queued_behind_one(
        builder, date_fns, [job(date_fns, c, with_map=False) for c in COMBOS]
    )
    for a, b in zip(with_maps, without, strict=True):
        assert isinstance(a, BuildOutput) and isinstance(b, BuildOutput)
        assert a.code == b.code and a.sourcemap and b.sourcemap is None


async def built_in_order(
    builder: Builder, root: Path, jobs: list[BuildJob], while_queued: Any = None
) -> list[str]:
    """Labels of ``jobs`` in the order their builds finish, all queued behind a held slot
    (``while_queued`` runs while they wait)."""
    order: list[str] = []

    async def build(j: BuildJob) -> None:
        await builder.build(j, root)
        order.append(j.label)

    async with builder.slots.slot(Priority.FALLBACK):
        tasks = [asyncio.ensure_future(build(j)) for j in jobs]
        await asyncio.sleep(0.05)
        if while_queued is not None:
            while_queued()
    await asyncio.gather(*tasks)
    return order


async def test_batches_are_bounded_and_take_the_most_urgent_first(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    builder = make_builder(esbuild, tmp_path, batch_max=2)
    priorities = [Priority.WARM, Priority.TAILORED, Priority.WARM, Priority.UNCOVERED]
    jobs = [job(date_fns, c, p) for c, p in zip(COMBOS, priorities, strict=False)]
    order = await built_in_order(builder, date_fns, jobs)
    assert builder.runs == {"batch": 2}
    # UNCOVERED and TAILORED went first, together; then the two warm-ups.
    assert set(order[:2]) == {jobs[3].label, jobs[1].label}


async def test_a_page_moves_a_queued_warm_up_build_ahead(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    builder = make_builder(esbuild, tmp_path, batch_max=1)
    jobs = [job(date_fns, COMBOS[0], Priority.TAILORED), job(date_fns, COMBOS[1], Priority.WARM)]
    order = await built_in_order(
        builder, date_fns, jobs, lambda: builder.promote(jobs[1].key, Priority.UNCOVERED)
    )
    assert order == [jobs[1].label, jobs[0].label]


async def test_a_failing_build_in_a_batch_gets_its_own_error_and_the_rest_are_built(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    # A module of the version that does not build (as real packages ship: a file
    # importing one the package does not), asked for together with good ones.
    (date_fns / "broken.js").write_text('import { x } from "./not-shipped.js";\nexport { x };\n')
    try:
        builder = make_builder(esbuild, tmp_path, batch_max=16)
        jobs = [job(date_fns, c) for c in COMBOS[:3]] + [job(date_fns, ("addDays", "broken"))]
        outputs = await queued_behind_one(builder, date_fns, jobs)
        assert all(isinstance(o, BuildOutput) for o in outputs[:3])
        assert isinstance(outputs[3], BuildFailed)
        assert 'Could not resolve "./not-shipped.js"' in outputs[3].message
        assert str(date_fns) not in outputs[3].message
        # The failed batch, then each alone (its own error, as a request alone gets it).
        assert builder.runs == {"batch": 1, "single": 4}
        # The file that failed keeps its builds out of the next batches.
        again = [job(date_fns, c) for c in COMBOS[3:]] + [job(date_fns, ("broken", "format"))]
        builder.runs.clear()
        outputs = await queued_behind_one(builder, date_fns, again)
        assert isinstance(outputs[-1], BuildFailed)
        assert builder.runs == {"batch": 1, "single": 1}
    finally:
        (date_fns / "broken.js").unlink()


async def test_a_cancelled_waiter_leaves_its_batch_and_the_pool_whole(
    esbuild: str, tmp_path: Path, date_fns: Path
) -> None:
    builder = make_builder(esbuild, tmp_path, batch_max=16)
    jobs = [job(date_fns, c) for c in COMBOS]
    async with builder.slots.slot(Priority.FALLBACK):
        tasks = [asyncio.ensure_future(builder.build(j, date_fns)) for j in jobs]
        await asyncio.sleep(0.05)
        tasks[0].cancel()  # the one that would have led the batch
        tasks[3].cancel()
        await asyncio.sleep(0)
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(o, BuildOutput) for i, o in enumerate(done) if i not in (0, 3))
    assert builder.runs == {"batch": 1}
    assert builder.slots.in_use == 0 and builder.queued == 0
    assert builder.batches.empty
