"""Builds on esbuild in a subprocess: a bounded pool, a deadline, a lower CPU priority.

The event loop never bundles: it asks a long-lived esbuild (bundler.build.pool) for
each build and waits for the answer, which carries the outputs. No request string is
ever an argument: the module list goes into a generated entry file in this service's
own scratch directory. Tailored builds may share a run (bundler.build.batch).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bundler.build.assets import AssetStore
from bundler.build.batch import BatchQueue, RunAlone
from bundler.build.jobs import BuildJob, BuildOutput, SurveyRun
from bundler.build.outputs import (
    ENTRY_NAME,
    EsbuildResult,
    read_output,
    read_outputs,
    relative,
)
from bundler.build.pool import EsbuildPool, check_esbuild
from bundler.build.reports import failure
from bundler.build.request import build_request, command
from bundler.build.run import run_build
from bundler.build.scratch import Scratch
from bundler.errors import (
    DISK_ERRNOS,
    BuildCrashed,
    BuildFailed,
    BuildTimeout,
    DiskFault,
    UnknownModule,
)
from bundler.settings import Settings
from bundler.slots import Priority, PrioritySlots

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How much nicer than a fallback's esbuild every other esbuild runs (nice(1) steps; each
# is about 1.25 x less CPU share when they compete).
FALLBACK_NICE_LEAD = 5
# How a run ended, for the bundler_builds_total{result} metric.
RESULTS: dict[type[BaseException], str] = {
    DiskFault: "disk_fault",
    BuildTimeout: "timeout",
    UnknownModule: "unknown_module",
    BuildFailed: "failed",
    BuildCrashed: "crashed",
    asyncio.CancelledError: "cancelled",
}
# Set while a task holds a slot for several runs (Builder.holding).
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_slot", default=False)


class Builder:
    """Runs build jobs on the long-lived esbuilds: a pool of priority slots, a deadline
    per build, batching of tailored builds, the outputs read into bundles."""

    def __init__(
        self,
        esbuild: str,
        scratch_dir: Path,
        *,
        pool_size: int,
        threads_per_build: int,
        timeout_s: float,
        niceness: int,
        batch_max: int = 1,
        memory_mib: int = 0,
    ) -> None:
        self.scratch_dir = scratch_dir
        self.scratch = Scratch(scratch_dir, timeout_s)
        self.assets = AssetStore(scratch_dir.parent / "assets")
        self.pool_size = pool_size
        self.threads_per_build = threads_per_build
        self.timeout_s = timeout_s
        self.niceness = niceness
        self.slots = PrioritySlots(pool_size)
        self.esbuilds = EsbuildPool(
            esbuild, threads=threads_per_build * pool_size, memory_mib=memory_mib
        )
        self.batches = BatchQueue(self.slots, batch_max, self._run_batch, self._count, timeout_s)
        self.batch_max = batch_max
        self.results: collections.Counter[str] = collections.Counter()
        # Builds asked of esbuild, by kind: single, batch, survey.
        self.runs: collections.Counter[str] = collections.Counter()
        # Called with (job, seconds, result) after every run; the metrics hook in here.
        self.on_finish: Callable[[BuildJob, float, str], None] | None = None

    @property
    def starts(self) -> int:
        """esbuild processes started."""
        return self.esbuilds.starts

    def promote(self, key: str, priority: Priority) -> None:
        """A queued build that a more urgent request now waits for moves up the queue."""
        self.batches.promote(key, priority)

    def move(self, key: str, priority: Priority) -> None:
        """A queued build moves to ``priority``, up or down."""
        self.batches.move(key, priority)

    def queued_jobs(self, version: str) -> list[tuple[BuildJob, Priority]]:
        """Tailored builds of ``version`` waiting for a slot, with their priority now."""
        return self.batches.queued_jobs(version)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Builder:
        """The service's builder; the offline commands override the pool's shape."""
        values: dict[str, Any] = {
            "pool_size": settings.pool_size,
            "threads_per_build": settings.threads_per_build,
            "timeout_s": settings.build_timeout_s,
            "niceness": settings.build_niceness,
            "batch_max": settings.build_batch_max,
            "memory_mib": settings.esbuild_memory_mib,
        }
        values.update(overrides)
        return cls(
            check_esbuild(settings.esbuild), Path(settings.data_dir).resolve() / "tmp", **values
        )

    @property
    def busy(self) -> int:
        """Builds in flight on an esbuild."""
        return self.esbuilds.busy

    @property
    def queued(self) -> int:
        return self.slots.queued

    async def build(self, job: BuildJob, source_root: Path) -> BuildOutput:
        if job.mode == "tailored" and not self.batches.suspect(job):
            try:
                return await self.batches.run(job, source_root)
            except RunAlone:
                pass
        return await self._in_slot(job, self._run_alone(job, source_root))

    def _count(self, job: BuildJob, seconds: float, outcome: object) -> None:
        if isinstance(outcome, BuildTimeout):
            logger.warning(
                "build timed out; esbuild was killed",
                extra={"key": job.key, "bundle": job.label, "timeout_s": self.timeout_s},
            )
        result = "ok"
        if isinstance(outcome, BaseException):
            result = RESULTS.get(type(outcome), "error")
        self.results[result] += 1
        if self.on_finish is not None:
            self.on_finish(job, seconds, result)

    async def survey(self, job: BuildJob, source_root: Path, externals: Sequence[str]) -> SurveyRun:
        """Bundle ``job`` only to learn its module graph and sizes (esbuild's metafile),
        every error reported; ``externals`` (paths under the root) are left unbundled."""
        return await self._in_slot(job, self._survey(job, source_root, externals))

    @contextlib.asynccontextmanager
    async def holding(self, priority: Priority) -> AsyncIterator[None]:
        """One slot for a task's several runs (a fallback's surveys and build): between
        them no queued build may take the slot back."""
        async with self.slots.slot(priority):
            token = _HOLDING.set(True)
            try:
                yield
            finally:
                _HOLDING.reset(token)

    async def _in_slot(self, job: BuildJob, run: Coroutine[Any, Any, T]) -> T:
        """Runs one esbuild job in a pool slot (or the one its task holds), counted by how
        it ended."""
        try:
            async with (
                contextlib.nullcontext() if _HOLDING.get() else self.slots.slot(job.priority)
            ):
                started = time.perf_counter()
                outcome: object = None
                try:
                    return await run
                except BaseException as exc:
                    outcome = exc
                    raise
                finally:
                    self._count(job, time.perf_counter() - started, outcome)
        finally:
            run.close()  # never started (cancelled while queued): no "never awaited" warning

    async def _survey(
        self, job: BuildJob, source_root: Path, externals: Sequence[str]
    ) -> SurveyRun:
        workdir = await asyncio.to_thread(self.scratch.prepare, [job], source_root)
        try:
            entry = workdir / "0" / ENTRY_NAME
            self.runs["survey"] += 1
            flags = [f"--external:./{path}" for path in externals]
            result = await self._esbuild(job, workdir, 1, source_root, flags)
            metafile = None
            output = None
            if result.report is None:
                metafile = await asyncio.to_thread(lambda: result.metafile)
                if job.map_url and job.with_map and not externals:
                    # The run made this one bundle: every input of it counts (a file
                    # from outside the version anywhere in it refuses the bundle).
                    read = await asyncio.to_thread(
                        read_output, result, workdir / "0", source_root, job, self.assets, True
                    )
                    if not read.outside:
                        output = BuildOutput(read.code, read.sourcemap, 0.0, read.css_map)
            return SurveyRun(
                ok=result.report is None,
                metafile=metafile,
                entry_key=relative(entry, source_root),
                stderr=result.report or "",
                outdir_key=relative(workdir, source_root),
                output=output,
            )
        finally:
            self.scratch.remove_later(workdir)

    def _nice_by(self, job: BuildJob) -> int:
        """Every esbuild yields the CPU to the service; all but a fallback's yield it to
        the fallback too (everyone waits on a fallback, each page on its own bundle)."""
        if not self.niceness:
            return 0
        if job.priority != Priority.FALLBACK:
            return self.niceness + FALLBACK_NICE_LEAD
        return self.niceness

    def clean_scratch(self) -> int:
        """Removes build dirs a killed process left behind (at the start)."""
        return self.scratch.clean()

    def command(self, entry: Path, outfile: Path, job: BuildJob) -> list[str]:
        """The esbuild command line of a build, as one would run it by hand."""
        return command(self.esbuilds.esbuild, entry, outfile, job)

    async def _run_alone(self, job: BuildJob, source_root: Path) -> BuildOutput:
        try:
            [output] = await self._run_batch([job], source_root)
        except (BuildFailed, UnknownModule):
            self.batches.remember_failure(job)
            raise
        if isinstance(output, BuildFailed):
            raise output
        return output

    async def _run_batch(
        self, jobs: Sequence[BuildJob], source_root: Path
    ) -> list[BuildOutput | BuildFailed]:
        """One esbuild build for ``jobs`` (same version and options). A failed build
        raises; for several jobs the error says nothing about any one of them."""
        try:
            workdir = await asyncio.to_thread(self.scratch.prepare, jobs, source_root)
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                raise DiskFault("build scratch", exc) from None
            raise
        try:
            started = time.perf_counter()
            self.runs["batch" if len(jobs) > 1 else "single"] += 1
            result = await self._esbuild(jobs[0], workdir, len(jobs), source_root)
            duration = time.perf_counter() - started
            if result.report is not None:
                if len(jobs) == 1:
                    raise failure(result.report, jobs[0], source_root, workdir / "0")
                logger.info("batch build failed; its builds run alone", extra={"builds": len(jobs)})
                raise BuildFailed("a batch failed")
            reads = await asyncio.to_thread(
                read_outputs, result, workdir, jobs, source_root, self.assets, self.esbuilds.version
            )
        finally:
            self.scratch.remove_later(workdir)
        results: list[BuildOutput | BuildFailed] = []
        for job, read in zip(jobs, reads, strict=True):
            if read.outside:
                results.append(
                    BuildFailed(
                        f"version {job.version} is not self-contained: the bundle would include "
                        f"{', '.join(dict.fromkeys(read.outside[:5]))} from outside the "
                        "version's source; "
                        "bare imports must resolve from node_modules inside the version"
                    )
                )
                continue
            logger.info(
                "built bundle",
                extra={
                    "key": job.key,
                    "bundle": job.label,
                    "duration_ms": round(duration * 1000),
                    "batch": len(jobs),
                },
            )
            results.append(
                BuildOutput(
                    read.code, read.sourcemap, duration, read.css_map, read.marks, read.inputs
                )
            )
        return results

    async def _esbuild(
        self,
        job: BuildJob,
        workdir: Path,
        count: int,
        source_root: Path,
        extra: Sequence[str] = (),
    ) -> EsbuildResult:
        """One build on the long-lived esbuild of the job's priority, within the deadline
        (bundler.build.run)."""
        return await run_build(
            self.esbuilds,
            build_request(workdir, count, job, source_root, extra),
            nice_by=self._nice_by(job),
            timeout_s=self.timeout_s,
            key=job.key,
            source_root=source_root,
            workdir=workdir,
        )

    async def kill_all(self) -> None:
        """Kills every esbuild now (the builds in flight fail; none starts again)."""
        await self.esbuilds.kill_all()

    async def close(self) -> None:
        """Stops every esbuild once its builds in flight are answered."""
        await self.esbuilds.close()
