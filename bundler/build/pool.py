"""The long-lived esbuild processes: one per niceness, started on first use, ended
after SERVICE_IDLE_S with nothing to build, killed whole at a deadline or a shutdown.

Each speaks esbuild's service protocol (bundler.esbuild_service), with its garbage
collector off and a soft memory limit (--esbuild-memory-mib), as esbuild's CLI runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

from bundler.errors import ConfigError
from bundler.esbuild_service import EsbuildService, ServiceGone

# A long-lived esbuild with nothing to build for this long ends (a fallback's build, say,
# leaves it holding memory); the next build starts another (2 ms).
SERVICE_IDLE_S = 30.0


def check_esbuild(path: str) -> str:
    """Resolve the esbuild binary once at start; a missing one is a one-line startup error."""
    found = shutil.which(path)
    if found is None:
        raise ConfigError(
            f"esbuild not found at {path!r}: run `npm ci` in the project directory, "
            "or point --esbuild / BUNDLER_ESBUILD at the binary"
        )
    return found


def renice(pgid: int, by: int) -> None:
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


class EsbuildPool:
    """The running esbuilds, by how much nicer than the service their builds run."""

    def __init__(self, esbuild: str, *, threads: int, memory_mib: int) -> None:
        self.esbuild = esbuild
        # GOMAXPROCS: builds in flight share the pool's CPUs; one build alone (a quiet
        # server's cold build, a fallback) has them all.
        self.threads = threads
        self.memory_mib = memory_mib
        self._services: dict[int, EsbuildService] = {}
        self._starting: dict[int, asyncio.Lock] = {}
        self._version: str | None = None
        self.closed = False
        self.starts = 0  # esbuild processes started

    @property
    def busy(self) -> int:
        """Builds in flight on an esbuild."""
        return sum(service.in_flight for service in self._services.values())

    async def service_for(self, by: int) -> EsbuildService:
        """The running esbuild whose builds run ``by`` nicer than the service, started
        (once, however many builds ask at once) if there is none."""
        service = self._services.get(by)
        if service is not None and service.alive:
            return service
        async with self._starting.setdefault(by, asyncio.Lock()):
            service = self._services.get(by)
            if service is not None and service.alive:
                return service
            if self.closed:
                raise ServiceGone(None, "", killed=True)
            service = EsbuildService(
                self.esbuild,
                await self.binary_version(),
                {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    # Builds in flight share the pool's CPUs: one build alone (a quiet
                    # server's cold build, a fallback) has them all.
                    "GOMAXPROCS": str(self.threads),
                    "NO_COLOR": "1",
                    **self._gc_env(),
                },
                idle_s=SERVICE_IDLE_S,
                on_start=lambda pid: renice(pid, by),
            )
            self.starts += 1
            await service.start()
            self._services[by] = service
            return service

    def _gc_env(self) -> dict[str, str]:
        """Go's collector off, as esbuild's CLI runs (it exits after one build), with a
        soft limit: a long-lived esbuild would otherwise collect every time its heap
        doubles, which slows its builds (docs/architecture.md, "Builds"); with the limit
        it collects only as its heap nears it, which bounds its memory."""
        if not self.memory_mib:
            return {}
        return {"GOGC": "off", "GOMEMLIMIT": f"{self.memory_mib}MiB"}

    @property
    def version(self) -> str:
        """The binary's version ("" until it was asked: binary_version)."""
        return self._version or ""

    async def binary_version(self) -> str:
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

    async def kill_all(self) -> None:
        """Kills every esbuild now (the builds in flight fail; none starts again)."""
        self.closed = True
        for service in self._services.values():
            service.kill()
        await self.close()

    async def close(self) -> None:
        """Stops every esbuild once its builds in flight are answered."""
        self.closed = True
        await asyncio.gather(*(s.close() for s in self._services.values()))
