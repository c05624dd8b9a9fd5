"""Whether the data dir can be written: checked at start, then every few seconds until it
can. It never makes the pod unready (with its fallback loaded a pod serves as well on a
broken disk, from memory); it shows in /readyz's body, /metrics and one log line per
change."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

# How often an unwritable data dir is looked at again.
DATA_DIR_RECHECK_S = 5.0


class DataDirHealth:
    def __init__(self, probe_dir: Path) -> None:
        self.probe_dir = probe_dir  # the build scratch dir: what must be writable
        self.problem: str | None = None
        self._watcher: asyncio.Task[None] | None = None

    def check(self) -> None:
        """Writes and removes a file under the data dir (call it in a thread)."""
        try:
            self.probe_dir.mkdir(parents=True, exist_ok=True)
            probe = self.probe_dir / f".probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            problem = f"the data dir cannot be written: {exc.strerror or exc}"
            if problem != self.problem:
                logger.error(
                    "data dir cannot be written; serving from memory and the fallback",
                    extra={"error": problem},
                )
            self.problem = problem
            return
        if self.problem is not None:
            logger.info("the data dir can be written again")
        self.problem = None

    async def start(self) -> None:
        await asyncio.to_thread(self.check)
        if self.problem is not None:
            self._watcher = asyncio.create_task(self._watch(), name="watch-data-dir")

    async def _watch(self) -> None:
        while self.problem is not None:
            await asyncio.sleep(DATA_DIR_RECHECK_S)
            await asyncio.to_thread(self.check)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
