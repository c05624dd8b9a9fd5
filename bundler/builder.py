"""Run esbuild in a subprocess: a bounded pool, a deadline, a lower CPU priority.

The event loop never bundles: it starts esbuild with asyncio (no shell), waits,
and reads the result. No request string is ever an argument: the module list
goes into a generated entry file in this service's own scratch directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bundler.entry import Registration, entry_source, names_for_specifier
from bundler.errors import BuildCrashed, BuildFailed, BuildTimeout, ConfigError, UnknownModule
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
METAFILE_NAME = "meta.json"
# How a run ended, for the bundler_builds_total{result} metric.
RESULTS: dict[type[BaseException], str] = {
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

    @classmethod
    def tailored(
        cls,
        spec: BundleSpec,
        registrations: tuple[Registration, ...],
        priority: Priority = Priority.TAILORED,
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
        )


@dataclass(frozen=True)
class BuildOutput:
    code: bytes
    sourcemap: bytes | None
    duration_s: float


@dataclass(frozen=True)
class SurveyRun:
    """One survey build (bundler.survey): no output kept, only what esbuild reported."""

    ok: bool
    metafile: dict[str, Any] | None
    entry_key: str  # the entry file as the metafile names it
    stderr: str
    # The bundle itself, when the job asked for a source map and nothing came from outside.
    output: BuildOutput | None = None


def check_esbuild(path: str) -> str:
    """Resolve the esbuild binary once at start; a missing one is a one-line startup error."""
    found = shutil.which(path)
    if found is None:
        raise ConfigError(
            f"esbuild not found at {path!r}: run `npm ci` in the project directory, "
            "or point --esbuild / BUNDLER_ESBUILD at the binary"
        )
    return found


class Builder:
    def __init__(
        self,
        esbuild: str,
        scratch_dir: Path,
        *,
        pool_size: int,
        threads_per_build: int,
        timeout_s: float,
        niceness: int,
    ) -> None:
        self.esbuild = esbuild
        self.scratch_dir = scratch_dir
        self.pool_size = pool_size
        self.threads_per_build = threads_per_build
        self.timeout_s = timeout_s
        self.niceness = niceness
        self.slots = PrioritySlots(pool_size)
        self._nice = shutil.which("nice") if niceness else None
        self._running: set[asyncio.subprocess.Process] = set()
        self.results: collections.Counter[str] = collections.Counter()
        # Called with (job, seconds, result) after every run; the metrics hook in here.
        self.on_finish: Callable[[BuildJob, float, str], None] | None = None

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return self.slots.queued

    async def build(self, job: BuildJob, source_root: Path) -> BuildOutput:
        return await self._in_slot(job, self._build(job, source_root))

    async def survey(self, job: BuildJob, source_root: Path, externals: Sequence[str]) -> SurveyRun:
        """Bundle ``job`` only to learn its module graph and sizes (esbuild's metafile),
        every error reported; ``externals`` (paths under the root) are left unbundled."""
        return await self._in_slot(job, self._survey(job, source_root, externals))

    async def _in_slot(self, job: BuildJob, run: Coroutine[Any, Any, T]) -> T:
        """Runs one esbuild job in a pool slot, counted by how it ended."""
        try:
            async with self.slots.slot(job.priority):
                started = time.perf_counter()
                result = "ok"
                try:
                    return await run
                except BaseException as exc:
                    result = RESULTS.get(type(exc), "error")
                    raise
                finally:
                    self.results[result] += 1
                    if self.on_finish is not None:
                        self.on_finish(job, time.perf_counter() - started, result)
        finally:
            run.close()  # never started (cancelled while queued): no "never awaited" warning

    async def _survey(
        self, job: BuildJob, source_root: Path, externals: Sequence[str]
    ) -> SurveyRun:
        workdir = await asyncio.to_thread(self._prepare, job, source_root)
        try:
            entry = workdir / ENTRY_NAME
            cmd = self.command(entry, workdir / OUTPUT_NAME, job)
            cmd += ["--log-limit=0", *(f"--external:./{path}" for path in externals)]
            returncode, stderr = await self._run(cmd, source_root)
            if returncode != 0 and (returncode < 0 or "[ERROR]" not in stderr):
                raise self._error(returncode, stderr, job, source_root, workdir)
            metafile = None
            output = None
            if returncode == 0:
                raw = await asyncio.to_thread((workdir / METAFILE_NAME).read_bytes)
                metafile = json.loads(raw)
                if job.map_url and not externals:
                    read = await asyncio.to_thread(
                        _read_output, workdir / OUTPUT_NAME, entry, source_root, job.map_url
                    )
                    if not read.outside:
                        output = BuildOutput(read.code, read.sourcemap, 0.0)
            return SurveyRun(
                ok=returncode == 0,
                metafile=metafile,
                entry_key=_relative(entry, source_root),
                stderr=stderr,
                output=output,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    def command(self, entry: Path, outfile: Path, job: BuildJob) -> list[str]:
        """The exact esbuild command line of a build (the benchmark runs it by hand too)."""
        cmd = [
            self.esbuild,
            str(entry),
            "--bundle",
            f"--outfile={outfile}",
            f"--metafile={outfile.with_name(METAFILE_NAME)}",
            "--format=iife",
            "--platform=browser",
            f"--target={job.options.target}",
            "--charset=utf8",
            "--log-level=error",
            "--color=false",
        ]
        if job.options.minify:
            cmd.append("--minify")
        if job.map_url:
            cmd.append("--sourcemap")
        if self._nice:
            cmd = [self._nice, "-n", str(self.niceness), *cmd]
        return cmd

    def _prepare(self, job: BuildJob, source_root: Path) -> Path:
        """The scratch dir and entry file (file system work: run in a thread)."""
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.scratch_dir))
        entry = workdir / ENTRY_NAME
        entry.write_text(
            entry_source(
                job.registrations,
                source_root,
                job.options.registry_name,
                version=job.version,
                mode=job.mode,
            )
        )
        return workdir

    async def _build(self, job: BuildJob, source_root: Path) -> BuildOutput:
        workdir = await asyncio.to_thread(self._prepare, job, source_root)
        try:
            entry = workdir / ENTRY_NAME
            outfile = workdir / OUTPUT_NAME
            started = time.perf_counter()
            returncode, stderr = await self._run(self.command(entry, outfile, job), source_root)
            duration = time.perf_counter() - started
            if returncode != 0:
                raise self._error(returncode, stderr, job, source_root, workdir)
            output = await asyncio.to_thread(_read_output, outfile, entry, source_root, job.map_url)
            if output.outside:
                raise BuildFailed(
                    f"version {job.version} is not self-contained: the bundle would include "
                    f"{', '.join(output.outside[:5])} from outside the version's source; "
                    "bare imports must resolve from node_modules inside the version"
                )
            logger.info(
                "built bundle",
                extra={"key": job.key, "bundle": job.label, "duration_ms": round(duration * 1000)},
            )
            return BuildOutput(code=output.code, sourcemap=output.sourcemap, duration_s=duration)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _run(self, cmd: list[str], cwd: Path) -> tuple[int, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Pool size x GOMAXPROCS = the CPUs we may use: the pool is the real CPU bound.
            "GOMAXPROCS": str(self.threads_per_build),
            "NO_COLOR": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=cwd,  # esbuild reports paths relative to this: the version's source root
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole at the deadline
        )
        self._running.add(proc)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            raise BuildTimeout(
                f"esbuild did not finish within {self.timeout_s:g} s and was stopped; "
                "try fewer modules or retry later"
            ) from None
        finally:
            self._running.discard(proc)
            if proc.returncode is None:
                await self._kill(proc)
        returncode = proc.returncode
        assert returncode is not None  # communicate() returned, so the process was reaped
        return returncode, stderr.decode("utf-8", "replace")

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _error(
        self, returncode: int, stderr: str, job: BuildJob, source_root: Path, workdir: Path
    ) -> BuildFailed | UnknownModule | BuildCrashed:
        if returncode < 0 or "[ERROR]" not in stderr:
            logger.error(
                "esbuild crashed",
                extra={
                    "key": job.key,
                    "returncode": returncode,
                    "stderr": stderr[-MAX_ERROR_CHARS:],
                },
            )
            return BuildCrashed(
                f"esbuild exited with status {returncode} without an error report; "
                "the service logged it, retry later"
            )
        unknown = sorted(
            {
                name
                for specifier in UNRESOLVED.findall(stderr)
                for name in names_for_specifier(specifier, job.registrations, source_root)
            }
        )
        if unknown:
            return UnknownModule(job.version, unknown)
        message = sanitize(stderr, source_root, workdir)
        logger.warning("build failed", extra={"key": job.key, "bundle": job.label})
        return BuildFailed(f"esbuild could not build version {job.version}:\n{message}")

    async def kill_all(self) -> None:
        for proc in list(self._running):
            await self._kill(proc)


@dataclass(frozen=True)
class _Output:
    code: bytes
    sourcemap: bytes | None
    outside: list[str]


def _read_output(outfile: Path, entry: Path, source_root: Path, map_url: str | None) -> _Output:
    """The bundle, its map, and the inputs esbuild took from outside the source root.

    esbuild resolves bare imports by walking up parent directories; a version must
    not pick up whatever node_modules happens to sit above the data directory.
    """
    meta = json.loads(outfile.with_name(METAFILE_NAME).read_bytes())
    entry_key = os.path.relpath(entry, source_root)
    outside = [
        "node_modules/" + name.rsplit("node_modules/", 1)[1]
        if "node_modules/" in name
        else Path(name).name
        for name in meta.get("inputs", {})
        if name != entry_key and (name.startswith("../") or os.path.isabs(name))
    ]
    code = outfile.read_bytes()
    map_bytes = None
    if map_url:
        map_bytes = _relative_sourcemap(outfile.with_name(OUTPUT_NAME + ".map"), entry, source_root)
        code = (
            SOURCE_MAP_COMMENT.sub(b"", code).rstrip()
            + f"\n//# sourceMappingURL={map_url}\n".encode()
        )
    return _Output(code, map_bytes, outside)


def _relative_sourcemap(map_file: Path, entry: Path, source_root: Path) -> bytes:
    """Map sources as paths under the version root, and no machine path anywhere.

    esbuild writes sources relative to the map's directory (our scratch dir):
    "../../sources/1.2.0/src/a.js". A byte-level rewrite of that known prefix
    avoids parsing maps that run to hundreds of KB (their sourcesContent) in
    Python while the loop wants the GIL.
    """
    raw = map_file.read_bytes()
    prefix = os.path.relpath(source_root, map_file.parent) + "/"
    raw = raw.replace(b'"' + prefix.encode(), b'"')
    raw = raw.replace(b'"' + ENTRY_NAME.encode() + b'"', b'"<entry>"')
    # The generated entry's own text names modules by absolute path.
    return raw.replace(str(source_root).encode() + b"/", b"")


def _relative(path: Path, root: Path) -> str:
    """``path`` as esbuild names it: relative to the directory it runs in."""
    return os.path.relpath(path, root)


def sanitize(report: str, source_root: Path, workdir: Path) -> str:
    """esbuild's report with no machine paths: sources relative to the version root."""
    text = report
    for path, label in ((workdir, "<entry>"), (source_root, "")):
        for form in (str(path), os.path.relpath(path, source_root)):
            if form != ".":
                text = text.replace(form + "/", label + ("/" if label else ""))
                text = text.replace(form, label)
    text = text.replace("<entry>/" + ENTRY_NAME, "<entry>")
    text = text.strip()
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "\n[... report truncated]"
    return text
