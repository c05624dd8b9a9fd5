"""Builds on esbuild in a subprocess: a bounded pool, a deadline, a lower CPU priority.

The event loop never bundles: it asks a long-lived esbuild (bundler.esbuild_service,
started with asyncio, no shell) for each build and waits for the answer, which
carries the outputs. No request string is ever an argument: the module list goes
into a generated entry file in this service's own scratch directory.

Tailored builds of one version that wait for a slot together go to esbuild
together: the first to get a slot takes up to ``batch_max`` of the others along,
one esbuild run with one entry point per bundle. esbuild parses each shared file
once and builds the entry points in parallel; each bundle is byte-for-byte what
it would be alone. Nobody waits to form a batch: an idle pool builds at once,
alone; batches form only from a queue that exists anyway. A batch that fails is
not picked apart: each of its builds runs again alone, so every error is the
one its own request would get, and files that failed stay out of batches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cachetools import TTLCache

from bundler import css
from bundler.entry import Registration, entry_source, names_for_specifier
from bundler.errors import (
    DISK_ERRNOS,
    BuildCrashed,
    BuildFailed,
    BuildTimeout,
    ConfigError,
    DiskFault,
    Unavailable,
    UnknownModule,
)
from bundler.esbuild_service import EsbuildService, ServiceGone
from bundler.fsutil import atomic_write
from bundler.settings import Settings
from bundler.slots import Priority, PrioritySlots
from bundler.spec import BuildOptions, BundleSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

UNRESOLVED = re.compile(r'Could not resolve "([^"]+)"')
SOURCE_MAP_COMMENT = re.compile(rb"//# sourceMappingURL=\S+\s*$")
# esbuild's report is returned to the client; this keeps a pathological one small.
MAX_ERROR_CHARS = 4000
ENTRY_NAME = "entry.js"
OUTPUT_NAME = "bundle.js"
# A file seen in a build that failed keeps its builds out of batches this long.
SUSPECT_TTL_S = 300.0
MAX_SUSPECTS = 4096
# How much nicer than a fallback's esbuild every other esbuild runs (nice(1) steps; each
# is about 1.25 x less CPU share when they compete).
FALLBACK_NICE_LEAD = 5
METAFILE_NAME = "meta.json"
# A long-lived esbuild with nothing to build for this long ends (a fallback's build, say,
# leaves it holding memory); the next build starts another (2 ms).
SERVICE_IDLE_S = 30.0
# How a run ended, for the bundler_builds_total{result} metric.
RESULTS: dict[type[BaseException], str] = {
    DiskFault: "disk_fault",
    BuildTimeout: "timeout",
    UnknownModule: "unknown_module",
    BuildFailed: "failed",
    BuildCrashed: "crashed",
    asyncio.CancelledError: "cancelled",
}


@dataclass(frozen=True)
class BuildJob:
    """One esbuild run: which names to register, from which files, how urgently."""

    version: str
    registrations: tuple[Registration, ...]
    options: BuildOptions
    key: str
    label: str  # for logs: the canonical query, or "fallback <version>"
    priority: Priority = Priority.TAILORED
    # Where the bundle's //# sourceMappingURL= points (relative); None: no source map.
    map_url: str | None = None
    mode: str = "tailored"  # or "fallback": recorded in the bundle for loaders
    # Make the source map in this run. A tailored bundle is built without it (a third
    # less esbuild work, a fifth of the memory) and its map on request, by a second run
    # whose code is byte-for-byte the same.
    with_map: bool = True

    @classmethod
    def tailored(
        cls,
        spec: BundleSpec,
        registrations: tuple[Registration, ...],
        priority: Priority = Priority.TAILORED,
        *,
        with_map: bool = False,
    ) -> BuildJob:
        """``registrations``: the spec's names with the files they resolve to (bundler.resolve)."""
        return cls(
            version=spec.version,
            registrations=registrations,
            options=spec.options,
            key=spec.key,
            label=spec.query,
            priority=priority,
            map_url="bundle.js.map?" + spec.query,
            with_map=with_map,
        )


@dataclass(frozen=True)
class BuildOutput:
    code: bytes
    sourcemap: bytes | None
    duration_s: float
    css_map: bytes | None = None  # the source map of the CSS it carries (/bundle.css.map)


@dataclass(frozen=True)
class SurveyRun:
    """One survey build (bundler.survey): no output kept, only what esbuild reported."""

    ok: bool
    metafile: dict[str, Any] | None
    entry_key: str  # the entry file as the metafile names it
    stderr: str
    # The output directory as the metafile names files: external imports are written
    # relative to it.
    outdir_key: str = "."
    # The bundle itself, when the job asked for a source map and nothing came from outside.
    output: BuildOutput | None = None


# Set while a task holds a slot for several runs (Builder.holding).
_HOLDING: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_slot", default=False)


@dataclass(eq=False)
class _Waiting:
    """A tailored build queued for a slot, which another's batch may take along."""

    job: BuildJob
    root: Path
    ticket: asyncio.Future[bool]  # True: its own slot; False: taken into a batch
    outcome: asyncio.Future[BuildOutput]
    priority: Priority
    order: int

    @property
    def group(self) -> tuple[str, BuildOptions, str, bool]:
        """Builds that can share one esbuild run: same version, options and output kind."""
        return (self.job.version, self.job.options, str(self.root), self.job.with_map)


class AssetStore:
    """Images and fonts moved out of bundles' CSS, by content hash: ``<data>/assets``.
    Written once (a name is its content), read by GET /assets/<version>/<name>."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, name: str, data: bytes) -> None:
        """In a build's thread; a disk that cannot take it is the service's fault."""
        path = self.directory / name
        if path.exists():
            return
        try:
            atomic_write(path, data)
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                raise DiskFault("assets", exc) from None
            raise

    def get(self, name: str) -> bytes | None:
        if not css.ASSET_NAME.fullmatch(name):
            return None
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def find(self, root: Path, name: str) -> bytes | None:
        """A replica that did not build the bundle: the version's file of that type and
        hash (then stored). Files outside the root (a symlink out) are never read."""
        if not css.ASSET_NAME.fullmatch(name):
            return None
        digest, ext = name.split(".")
        suffixes = (f".{ext}", ".jpeg") if ext == "jpg" else (f".{ext}",)
        real_root = root.resolve()
        for path in root.rglob("*"):
            if path.suffix.lower() not in suffixes or not path.is_file():
                continue
            if not path.resolve().is_relative_to(real_root):
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:32] == digest:
                self.put(name, data)
                return data
        return None


class _RunAlone(Exception):
    """The batch this build was in failed: it runs again on its own."""


def check_esbuild(path: str) -> str:
    """Resolve the esbuild binary once at start; a missing one is a one-line startup error."""
    found = shutil.which(path)
    if found is None:
        raise ConfigError(
            f"esbuild not found at {path!r}: run `npm ci` in the project directory, "
            "or point --esbuild / BUNDLER_ESBUILD at the binary"
        )
    return found


def _renice(pgid: int, by: int) -> None:
    """Make a just-started esbuild ``by`` nicer than the service, every thread of it.

    Set on its process group (each esbuild leads its own) rather than by starting it under
    nice(1), an extra exec. Linux keeps a nice value per thread; the group call reaches
    each thread there is, and threads started later inherit it. Its first microseconds
    go at the service's own priority."""
    if by <= 0:
        return
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
        os.setpriority(os.PRIO_PGRP, pgid, target)
    except OSError:  # gone already, or not allowed here: it runs at the service's priority
        pass


class Builder:
    # A build whose esbuild was killed for another build's deadline runs again this often.
    ATTEMPTS_AFTER_A_KILL = 1

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
        self.esbuild = esbuild
        self.scratch_dir = scratch_dir
        self.assets = AssetStore(scratch_dir.parent / "assets")
        self.pool_size = pool_size
        self.threads_per_build = threads_per_build
        self.timeout_s = timeout_s
        self.niceness = niceness
        self.memory_mib = memory_mib
        self.slots = PrioritySlots(pool_size)
        # The long-lived esbuilds, by how much nicer than the service they run.
        self._services: dict[int, EsbuildService] = {}
        self._starting: dict[int, asyncio.Lock] = {}
        self._version: str | None = None
        self._closed = False
        self.batch_max = batch_max
        self.results: collections.Counter[str] = collections.Counter()
        # Builds asked of esbuild, by kind: single, batch, survey.
        self.runs: collections.Counter[str] = collections.Counter()
        self.starts = 0  # esbuild processes started
        self._waiting: dict[tuple[str, BuildOptions, str, bool], list[_Waiting]] = {}
        self._by_key: dict[str, _Waiting] = {}
        self._arrivals = itertools.count()
        # (version, file) seen in a build that failed: such builds run alone for a while.
        self._suspects: TTLCache[tuple[str, str], bool] = TTLCache(MAX_SUSPECTS, SUSPECT_TTL_S)
        # Called with (job, seconds, result) after every run; the metrics hook in here.
        self.on_finish: Callable[[BuildJob, float, str], None] | None = None
        self._removals: set[asyncio.Future[None]] = set()

    def _remove_later(self, workdir: Path) -> None:
        """A build's scratch dir goes once its slot is given back and its outcome is out
        (thousands of files' delete would otherwise be waited out in the slot; one that
        a crash leaves behind is cleaned at the next start)."""
        removal = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, workdir, True))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

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
        return sum(service.in_flight for service in self._services.values())

    @property
    def queued(self) -> int:
        return self.slots.queued

    async def build(self, job: BuildJob, source_root: Path) -> BuildOutput:
        if job.mode == "tailored" and not self._suspect(job):
            try:
                return await self._build_batched(job, source_root)
            except _RunAlone:
                pass
        return await self._in_slot(job, self._build(job, source_root))

    def promote(self, key: str, priority: Priority) -> None:
        """A queued build that a more urgent request now waits for moves up the queue."""
        waiting = self._by_key.get(key)
        if waiting is not None and priority < waiting.priority:
            self.move(key, priority)

    def move(self, key: str, priority: Priority) -> None:
        """A queued build moves to ``priority``, up or down (a page it was urgent for
        has another answer now)."""
        waiting = self._by_key.get(key)
        if waiting is not None:
            waiting.priority = priority
            self.slots.move(waiting.ticket, priority)

    def clean_scratch(self) -> int:
        """Removes build dirs left by a process killed mid-build (kill -9, OOM). Only those
        older than twice the build deadline: no live build, here or in a process sharing
        the data dir, is that old."""
        if not self.scratch_dir.is_dir():
            return 0
        cutoff = time.time() - 2 * self.timeout_s
        removed = 0
        for entry in self.scratch_dir.iterdir():
            try:
                stale = entry.name.startswith("build-") and entry.stat().st_mtime < cutoff
            except OSError:
                continue
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def queued_jobs(self, version: str) -> list[tuple[BuildJob, Priority]]:
        """Tailored builds of ``version`` waiting for a slot, with their priority now."""
        return [
            (w.job, w.priority)
            for (queued_version, *_), queue in self._waiting.items()
            if queued_version == version
            for w in queue
            if not w.ticket.done()
        ]

    def _suspect(self, job: BuildJob) -> bool:
        return any((job.version, path) in self._suspects for _, path in job.registrations)

    def _remember_failure(self, job: BuildJob) -> None:
        for _, path in job.registrations:
            self._suspects[(job.version, path)] = True

    async def _build_batched(self, job: BuildJob, source_root: Path) -> BuildOutput:
        loop = asyncio.get_running_loop()
        me = _Waiting(
            job,
            source_root,
            self.slots.enqueue(job.priority),
            loop.create_future(),
            job.priority,
            next(self._arrivals),
        )
        self._waiting.setdefault(me.group, []).append(me)
        self._by_key.setdefault(job.key, me)
        try:
            granted = await me.ticket
        except asyncio.CancelledError:
            self._forget(me)
            self.slots.abandon(me.ticket)
            raise
        if not granted:
            return await me.outcome  # another's batch took it along (and forgot it)
        self._forget(me)
        try:
            await self._run_batch([me, *self._take_along(me)])
        finally:
            self.slots.release()
        return me.outcome.result()

    def _forget(self, waiting: _Waiting) -> None:
        queue = self._waiting.get(waiting.group)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiting)
            if not queue:
                del self._waiting[waiting.group]
        if self._by_key.get(waiting.job.key) is waiting:
            del self._by_key[waiting.job.key]

    def _take_along(self, leader: _Waiting) -> list[_Waiting]:
        """Up to batch_max - 1 queued builds that can share the leader's run, most urgent first."""
        queue = sorted(self._waiting.get(leader.group, ()), key=lambda w: (w.priority, w.order))
        taken: list[_Waiting] = []
        for waiting in queue:
            if len(taken) + 1 >= self.batch_max:
                break
            if self.slots.claim(waiting.ticket):
                taken.append(waiting)
        for waiting in taken:
            self._forget(waiting)
        return taken

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        """One esbuild run for every build of ``batch``; each outcome is settled."""
        jobs = [w.job for w in batch]
        root = batch[0].root
        started = time.perf_counter()
        try:
            outputs = await self._build_many(jobs, root)
        except DiskFault as exc:
            for waiting in batch:
                self._count(waiting.job, time.perf_counter() - started, exc)
                _settle(waiting.outcome, exc)
            return
        except (BuildFailed, UnknownModule, BuildCrashed, BuildTimeout) as exc:
            if isinstance(exc, BuildTimeout) and len(batch) > 1:
                logger.warning(
                    "batch build timed out; its builds run alone",
                    extra={"builds": len(batch), "timeout_s": self.timeout_s},
                )
            for waiting in batch:
                if len(batch) == 1:
                    self._count(waiting.job, time.perf_counter() - started, exc)
                    if not isinstance(exc, (BuildCrashed, BuildTimeout)):
                        self._remember_failure(waiting.job)
                _settle(waiting.outcome, exc if len(batch) == 1 else _RunAlone())
            return
        except BaseException as exc:
            for waiting in batch:
                self._count(waiting.job, time.perf_counter() - started, exc)
                if not waiting.outcome.done():
                    waiting.outcome.cancel()
            raise
        for waiting, output in zip(batch, outputs, strict=True):
            self._count(waiting.job, time.perf_counter() - started, output)
            _settle(waiting.outcome, output)

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
        workdir = await asyncio.to_thread(self._prepare_many, [job], source_root)
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
                    # The run made this one bundle: every input of it counts, as before
                    # the long-lived esbuild.
                    read = await asyncio.to_thread(
                        _read_output, result, workdir / "0", source_root, job, self.assets, True
                    )
                    if not read.outside:
                        output = BuildOutput(read.code, read.sourcemap, 0.0, read.css_map)
            return SurveyRun(
                ok=result.report is None,
                metafile=metafile,
                entry_key=_relative(entry, source_root),
                stderr=result.report or "",
                outdir_key=_relative(workdir, source_root),
                output=output,
            )
        finally:
            self._remove_later(workdir)

    def command(self, entry: Path, outfile: Path, job: BuildJob) -> list[str]:
        """The esbuild command line of a build: what the service asks its long-lived
        esbuild for, as one would run it by hand (the benchmark does)."""
        return [
            self.esbuild,
            str(entry),
            "--bundle",
            f"--outfile={outfile}",
            f"--metafile={outfile.with_name(METAFILE_NAME)}",
            *self._flags(job),
            "--log-level=error",
        ]

    def _request(
        self, workdir: Path, count: int, job: BuildJob, source_root: Path, extra: Sequence[str]
    ) -> dict[str, Any]:
        """One build request for ``count`` bundles: entry ``I/entry.js`` comes back as
        ``I/bundle.js``, the layout of a single build, so a bundle and its map come out
        the same either way. Nothing is written: the outputs come back in the answer."""
        stem = OUTPUT_NAME.removesuffix(".js")
        return {
            "command": "build",
            "key": 0,  # the service gives each build in flight its own
            "entries": [[f"{i}/{stem}", str(workdir / str(i) / ENTRY_NAME)] for i in range(count)],
            "flags": [
                "--bundle",
                f"--outdir={workdir}",
                "--metafile",
                *self._flags(job),
                "--log-level=silent",  # the errors come back in the answer
                *extra,
            ],
            "write": False,
            "stdinContents": None,
            "stdinResolveDir": None,
            "absWorkingDir": str(source_root),  # reports name files relative to it
            # A name the package publishes (the entry imports it as is) resolves through
            # the version's link to itself (extract.link_self), as in an application.
            "nodePaths": [str(source_root / "node_modules")],
            "context": False,
        }

    @staticmethod
    def _flags(job: BuildJob) -> list[str]:
        flags = [
            "--format=iife",
            "--platform=browser",
            f"--target={job.options.target}",
            "--charset=utf8",
            "--color=false",
        ]
        flags += css.loader_flags()
        if job.options.minify:
            flags.append("--minify")
        if job.map_url and job.with_map:
            flags.append("--sourcemap")
        return flags

    def _nice_by(self, job: BuildJob) -> int:
        """Every esbuild yields the CPU to the service; all but a fallback's yield it to
        the fallback too (everyone waits on a fallback, each page on its own bundle)."""
        if not self.niceness:
            return 0
        if job.priority != Priority.FALLBACK:
            return self.niceness + FALLBACK_NICE_LEAD
        return self.niceness

    def _prepare_many(self, jobs: Sequence[BuildJob], source_root: Path) -> Path:
        workdir = self._scratch()
        try:
            for i, job in enumerate(jobs):
                (workdir / str(i)).mkdir()
                (workdir / str(i) / ENTRY_NAME).write_text(self._entry(job, source_root))
        except BaseException:  # a full disk: the dir goes now, not at the next start
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return workdir

    def _scratch(self) -> Path:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="build-", dir=self.scratch_dir))

    @staticmethod
    def _entry(job: BuildJob, source_root: Path) -> str:
        return entry_source(
            job.registrations,
            source_root,
            job.options.registry_name,
            version=job.version,
            mode=job.mode,
        )

    async def _build(self, job: BuildJob, source_root: Path) -> BuildOutput:
        try:
            [output] = await self._build_many([job], source_root)
        except (BuildFailed, UnknownModule):
            self._remember_failure(job)
            raise
        if isinstance(output, BuildFailed):
            raise output
        return output

    async def _build_many(
        self, jobs: Sequence[BuildJob], source_root: Path
    ) -> list[BuildOutput | BuildFailed]:
        """One esbuild build for ``jobs`` (same version and options). A failed build
        raises; for several jobs the error says nothing about any one of them."""
        try:
            workdir = await asyncio.to_thread(self._prepare_many, jobs, source_root)
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
                    raise self._failed(result.report, jobs[0], source_root, workdir / "0")
                logger.info("batch build failed; its builds run alone", extra={"builds": len(jobs)})
                raise BuildFailed("a batch failed")
            reads = await asyncio.to_thread(
                _read_outputs, result, workdir, jobs, source_root, self.assets
            )
        finally:
            self._remove_later(workdir)
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
            results.append(BuildOutput(read.code, read.sourcemap, duration, read.css_map))
        return results

    async def _esbuild(
        self,
        job: BuildJob,
        workdir: Path,
        count: int,
        source_root: Path,
        extra: Sequence[str] = (),
    ) -> _Result:
        """One build on the long-lived esbuild of the job's priority, within the deadline.

        At the deadline the esbuild is killed whole (a build cannot be stopped alone);
        the other builds it had in flight did nothing wrong and run once more on a new
        one. A crash fails every build in flight: which one caused it cannot be told."""
        request = self._request(workdir, count, job, source_root, extra)
        for attempt in range(1 + self.ATTEMPTS_AFTER_A_KILL):
            service: EsbuildService | None = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    service = await self._service_for(self._nice_by(job))
                    response = await service.request(request)
                    if not response.get("errors"):
                        return _Result(
                            None,
                            response["metafile"],
                            {f["path"]: f["contents"] for f in response["outputFiles"]},
                        )
                    formatted = await service.request(
                        {
                            "command": "format-msgs",
                            "messages": response["errors"],
                            "isWarning": False,
                            "color": False,
                        }
                    )
                    return _Result("".join(formatted["messages"]), "{}", {})
            except TimeoutError:
                if service is not None:
                    service.kill()
                raise BuildTimeout(
                    f"esbuild did not finish within {self.timeout_s:g} s and was stopped; "
                    "try fewer modules or retry later"
                ) from None
            except ServiceGone as gone:
                if self._closed:
                    raise Unavailable("the service is shutting down; retry") from None
                if gone.killed and attempt < self.ATTEMPTS_AFTER_A_KILL:
                    continue  # another build's deadline: this one runs again
                raise self._crashed(gone, job, source_root, workdir) from None
        raise AssertionError("unreachable")

    async def _service_for(self, by: int) -> EsbuildService:
        """The running esbuild whose builds run ``by`` nicer than the service, started
        (once, however many builds ask at once) if there is none."""
        service = self._services.get(by)
        if service is not None and service.alive:
            return service
        async with self._starting.setdefault(by, asyncio.Lock()):
            service = self._services.get(by)
            if service is not None and service.alive:
                return service
            if self._closed:
                raise ServiceGone(None, "", killed=True)
            service = EsbuildService(
                self.esbuild,
                await self._esbuild_version(),
                {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    # Builds in flight share the pool's CPUs: one build alone (a quiet
                    # server's cold build, a fallback) has them all.
                    "GOMAXPROCS": str(self.threads_per_build * self.pool_size),
                    "NO_COLOR": "1",
                    **self._gc_env(),
                },
                idle_s=SERVICE_IDLE_S,
                on_start=lambda pid: _renice(pid, by),
            )
            self.starts += 1
            await service.start()
            self._services[by] = service
            return service

    def _gc_env(self) -> dict[str, str]:
        """esbuild's CLI turns Go's garbage collector off (it exits after one build); a
        long-lived one collects by default, every time its heap doubles, which made a
        lodash-es page's build 38 ms instead of 25. Off, with a soft memory limit, it
        collects only as its heap nears the limit, which bounds its memory."""
        if not self.memory_mib:
            return {}
        return {"GOGC": "off", "GOMEMLIMIT": f"{self.memory_mib}MiB"}

    async def _esbuild_version(self) -> str:
        """The binary's version, which its service must be started with (asked once)."""
        if self._version is None:
            proc = await asyncio.create_subprocess_exec(
                self.esbuild,
                "--version",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            try:
                out, err = await proc.communicate()
            finally:
                if proc.returncode is None:
                    await self._kill(proc)
            if proc.returncode != 0:
                raise ServiceGone(proc.returncode, err.decode("utf-8", "replace"), killed=False)
            self._version = out.decode().strip()
        return self._version

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _crashed(
        self, gone: ServiceGone, job: BuildJob, source_root: Path, workdir: Path
    ) -> BuildCrashed:
        logger.error(
            "esbuild crashed",
            extra={
                "key": job.key,
                "returncode": gone.returncode,
                "stderr": sanitize(gone.stderr[-MAX_ERROR_CHARS:], source_root, workdir),
            },
        )
        return BuildCrashed(
            f"esbuild exited with status {gone.returncode} without an error report; "
            "the service logged it, retry later"
        )

    def _failed(
        self, report: str, job: BuildJob, source_root: Path, workdir: Path
    ) -> BuildFailed | UnknownModule:
        unknown = sorted(
            {
                name
                for specifier in UNRESOLVED.findall(report)
                for name in names_for_specifier(specifier, job.registrations, source_root)
            }
        )
        if unknown:
            return UnknownModule(job.version, unknown)
        missing = missing_packages(sanitize(report, source_root, workdir))
        if missing:
            logger.warning("build failed", extra={"key": job.key, "bundle": job.label})
            return BuildFailed(
                f"version {job.version} cannot be built: "
                + "; ".join(f"{where} imports {spec!r}" for spec, where in missing.items())
                + f", which {'is' if len(missing) == 1 else 'are'} not installed with it. "
                "A package that a module imports must be one of the published package's "
                '"dependencies" (not a devDependency), so that it is installed with it'
            )
        message = sanitize(report, source_root, workdir)
        logger.warning("build failed", extra={"key": job.key, "bundle": job.label})
        return BuildFailed(f"esbuild could not build version {job.version}:\n{message}")

    async def kill_all(self) -> None:
        """Kills every esbuild now (the builds in flight fail; none starts again)."""
        self._closed = True
        for service in self._services.values():
            service.kill()
        await self.close()

    async def close(self) -> None:
        """Stops every esbuild once its builds in flight are answered."""
        self._closed = True
        await asyncio.gather(*(s.close() for s in self._services.values()))


class _Result:
    """What one build request gave: esbuild's report if it failed, else its outputs.
    The metafile is parsed where it is first used, in a worker thread: a survey's runs
    to megabytes, too long a parse for the event loop."""

    def __init__(self, report: str | None, metafile: str, files: dict[str, bytes]) -> None:
        self.report = report
        self.files = files
        self._metafile_json = metafile

    @functools.cached_property
    def metafile(self) -> dict[str, Any]:
        return dict(json.loads(self._metafile_json))


@dataclass(frozen=True)
class _Output:
    code: bytes
    sourcemap: bytes | None
    outside: list[str]
    css_map: bytes | None = None


def _read_output(
    result: _Result,
    outdir: Path,
    source_root: Path,
    job: BuildJob,
    assets: AssetStore,
    whole_run: bool = False,
) -> _Output:
    """The bundle esbuild made in ``outdir`` (its entry beside it), its map, and the
    inputs esbuild took from outside the source root.

    esbuild resolves bare imports by walking up parent directories; a version must
    not pick up whatever node_modules happens to sit above the data directory.
    ``whole_run``: every input of the run counts (it made this one bundle), not only
    those that ended up in this bundle.
    """
    meta = result.metafile
    outfile = outdir / OUTPUT_NAME
    entry = outdir / ENTRY_NAME
    if whole_run:
        inputs = dict(meta.get("inputs", {}))
    else:
        inputs = dict(meta["outputs"][_relative(outfile, source_root)]["inputs"])
    css_file = outfile.with_name(css.CSS_NAME)
    css_pieces: list[bytes] = []
    css_edits: css.Edits = {}
    css_bytes = result.files.get(str(css_file))
    if css_bytes is not None:  # its modules import CSS: it travels inside the bundle
        css_output = meta.get("outputs", {}).get(_relative(css_file, source_root), {})
        css_from = css_output.get("inputs", {})
        inputs.update(css_from)
        css_pieces, css_edits = css.move_out_css(
            css.pieces(css_bytes, css.css_inputs(css_from)),
            job.options.asset_inline_max_bytes,
            job.version,
            assets.put,
        )
        # What the CSS points at (inlined, so in no output's inputs) is checked like an import.
        for name in list(css_from):
            for record in meta.get("inputs", {}).get(name, {}).get("imports", []):
                if not record.get("external"):
                    inputs.setdefault(record.get("path", ""), {})
    entry_key = os.path.relpath(entry, source_root)
    outside = [
        # A package it imported by name; any other file outside is not named at all.
        "node_modules/" + name.rsplit("node_modules/", 1)[1]
        if "node_modules/" in name
        else "a file (an absolute path, a '..' beyond the root, or a symlink out)"
        for name in inputs
        if name != entry_key and (name.startswith("../") or os.path.isabs(name))
    ]
    code, js_edits = css.move_out_js(
        result.files[str(outfile)], job.options.asset_inline_max_bytes, job.version, assets.put
    )
    map_bytes = css_map = None
    if css_pieces and job.map_url and job.with_map:
        raw = result.files[str(css_file) + ".map"]
        css_map = css.shift_map(_relative_sourcemap(raw, outdir, source_root), css_edits)
    if css_pieces:  # after the last mapped line: the source map stays exact
        code = SOURCE_MAP_COMMENT.sub(b"", code).rstrip() + b"\n" + css.injector(css_pieces)
    if job.map_url:
        if job.with_map:
            raw = result.files[str(outfile) + ".map"]
            map_bytes = css.shift_map(_relative_sourcemap(raw, outdir, source_root), js_edits)
        code = (
            SOURCE_MAP_COMMENT.sub(b"", code).rstrip()
            + f"\n//# sourceMappingURL={job.map_url}\n".encode()
        )
    return _Output(code, map_bytes, outside, css_map)


def _read_outputs(
    result: _Result,
    workdir: Path,
    jobs: Sequence[BuildJob],
    source_root: Path,
    assets: AssetStore,
) -> list[_Output]:
    """Every bundle of one build (the layout of Builder._request)."""
    return [
        _read_output(result, workdir / str(i), source_root, job, assets)
        for i, job in enumerate(jobs)
    ]


def _settle(future: asyncio.Future[BuildOutput], outcome: BuildOutput | BaseException) -> None:
    if future.done():
        return  # its waiter was cancelled
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _relative_sourcemap(raw: bytes, outdir: Path, source_root: Path) -> bytes:
    """Map sources as paths under the version root, and no machine path anywhere.

    esbuild writes sources relative to the map's directory (our scratch dir):
    "../../sources/1.2.0/src/a.js". A byte-level rewrite of that known prefix
    avoids parsing maps that run to hundreds of KB (their sourcesContent) in
    Python while the loop wants the GIL.
    """
    prefix = os.path.relpath(source_root, outdir) + "/"
    raw = raw.replace(b'"' + prefix.encode(), b'"')
    raw = raw.replace(b'"' + ENTRY_NAME.encode() + b'"', b'"<entry>"')
    # The generated entry's own text names modules by absolute path.
    return raw.replace(str(source_root).encode() + b"/", b"")


def _relative(path: Path, root: Path) -> str:
    """``path`` as esbuild names it: relative to its working directory (the source root)."""
    return os.path.relpath(path, root)


# A location line of esbuild's report: "    path/to/file.js:12:3:".
LOCATION = re.compile(r"^\s+(\S[^\n]*?):\d+:\d+:$", re.MULTILINE)
MESSAGE_START = re.compile(r"^(?=[✘▲] \[)", re.MULTILINE)
OUTSIDE_MESSAGE = (
    "✘ [ERROR] a module of this version imports a file outside it (an absolute path, "
    "a '..' beyond its root, or a symlink out); only files inside the version are bundled"
)


def _redact_outside(report: str) -> str:
    """A message located in a file outside the version is replaced whole: esbuild quotes
    the line it points at, and nothing outside a version's root may reach an answer."""
    messages = MESSAGE_START.split(report)
    kept = []
    for message in messages:
        paths = LOCATION.findall(message)
        if any(p.startswith(("../", "/")) or p == ".." for p in paths):
            if OUTSIDE_MESSAGE not in kept:
                kept.append(OUTSIDE_MESSAGE + "\n\n")
        else:
            kept.append(message)
    return "".join(kept)


def missing_packages(report: str) -> dict[str, str]:
    """{package specifier: the file importing it} for each bare import esbuild could not
    resolve in a (sanitized) report: a dependency that is not installed."""
    missing: dict[str, str] = {}
    for message in MESSAGE_START.split(report):
        match = UNRESOLVED.search(message)
        if match is None or match.group(1).startswith((".", "/")):
            continue
        location = LOCATION.search(message)
        missing.setdefault(match.group(1), location.group(1) if location else "a module")
    return missing


def sanitize(report: str, source_root: Path, workdir: Path) -> str:
    """esbuild's report with no machine paths: sources relative to the version root."""
    text = report
    for path, label in ((workdir, "<entry>"), (source_root, "")):
        for form in (str(path), os.path.relpath(path, source_root)):
            if form != ".":
                text = text.replace(form + "/", label + ("/" if label else ""))
                text = text.replace(form, label)
    text = text.replace("<entry>/" + ENTRY_NAME, "<entry>")
    text = _redact_outside(text).strip()
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "\n[... report truncated]"
    return text
