"""Run esbuild in a subprocess: a bounded pool, a deadline, a lower CPU priority.

The event loop never bundles: it starts esbuild with asyncio (no shell), waits,
and reads the result. No request string is ever an argument: the module list
goes into a generated entry file in this service's own scratch directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bundler.entry import entry_source, specifier_to_module
from bundler.errors import BuildCrashed, BuildFailed, BuildTimeout, ConfigError, UnknownModule
from bundler.spec import BundleSpec

logger = logging.getLogger(__name__)

UNRESOLVED = re.compile(r'Could not resolve "([^"]+)"')
# esbuild's report is returned to the client; this keeps a pathological one small.
MAX_ERROR_CHARS = 4000
ENTRY_NAME = "entry.js"
OUTPUT_NAME = "bundle.js"
METAFILE_NAME = "meta.json"


@dataclass(frozen=True)
class BuildOutput:
    code: bytes
    duration_s: float


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
        self._slots = asyncio.Semaphore(pool_size)
        self._nice = shutil.which("nice") if niceness else None
        self._running: set[asyncio.subprocess.Process] = set()
        self.waiting = 0

    @property
    def busy(self) -> int:
        return len(self._running)

    async def build(self, spec: BundleSpec, source_root: Path) -> BuildOutput:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        try:
            return await self._build(spec, source_root)
        finally:
            self._slots.release()

    def command(self, entry: Path, outfile: Path, spec: BundleSpec) -> list[str]:
        """The exact esbuild command line of a build (the benchmark runs it by hand too)."""
        cmd = [
            self.esbuild,
            str(entry),
            "--bundle",
            f"--outfile={outfile}",
            f"--metafile={outfile.with_name(METAFILE_NAME)}",
            "--format=iife",
            "--platform=browser",
            f"--target={spec.options.target}",
            "--charset=utf8",
            "--log-level=error",
            "--color=false",
        ]
        if spec.options.minify:
            cmd.append("--minify")
        if self._nice:
            cmd = [self._nice, "-n", str(self.niceness), *cmd]
        return cmd

    async def _build(self, spec: BundleSpec, source_root: Path) -> BuildOutput:
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.scratch_dir))
        try:
            entry = workdir / ENTRY_NAME
            entry.write_text(entry_source(spec.modules, source_root, spec.options.registry_name))
            outfile = workdir / OUTPUT_NAME
            started = time.perf_counter()
            returncode, stderr = await self._run(self.command(entry, outfile, spec), source_root)
            duration = time.perf_counter() - started
            if returncode != 0:
                raise self._error(returncode, stderr, spec, source_root, workdir)
            code, outside = await asyncio.to_thread(_read_output, outfile, entry, source_root)
            if outside:
                raise BuildFailed(
                    f"version {spec.version} is not self-contained: the bundle would include "
                    f"{', '.join(outside[:5])} from outside the version's source; "
                    "bare imports must resolve from node_modules inside the version"
                )
            logger.info(
                "built bundle",
                extra={
                    "key": spec.key,
                    "bundle": spec.query,
                    "duration_ms": round(duration * 1000),
                },
            )
            return BuildOutput(code=code, duration_s=duration)
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
        self, returncode: int, stderr: str, spec: BundleSpec, source_root: Path, workdir: Path
    ) -> BuildFailed | UnknownModule | BuildCrashed:
        if returncode < 0 or "[ERROR]" not in stderr:
            logger.error(
                "esbuild crashed",
                extra={
                    "key": spec.key,
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
                for spec_text in UNRESOLVED.findall(stderr)
                if (name := specifier_to_module(spec_text, spec.modules, source_root)) is not None
            }
        )
        if unknown:
            return UnknownModule(spec.version, unknown)
        message = sanitize(stderr, source_root, workdir)
        logger.warning("build failed", extra={"key": spec.key, "bundle": spec.query})
        return BuildFailed(f"esbuild could not build version {spec.version}:\n{message}")

    async def kill_all(self) -> None:
        for proc in list(self._running):
            await self._kill(proc)


def _read_output(outfile: Path, entry: Path, source_root: Path) -> tuple[bytes, list[str]]:
    """The bundle, and the inputs esbuild took from outside the source root (by its metafile).

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
    return outfile.read_bytes(), outside


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
