"""A build's scratch dir: its generated entry files, under the data dir.

Each build writes one entry file per bundle into a dir of its own (the module list never
becomes an argument), gone once the build's outcome is out, or at once when it could not
be written; dirs a killed process left behind go at the next start.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bundler.build.jobs import BuildJob
from bundler.build.outputs import ENTRY_NAME
from bundler.entry import entry_source


class Scratch:
    def __init__(self, directory: Path, timeout_s: float) -> None:
        self.directory = directory
        self.timeout_s = timeout_s  # the build deadline: no live build is older than twice it
        self._removals: set[asyncio.Future[None]] = set()

    def prepare(self, jobs: Sequence[BuildJob], source_root: Path) -> Path:
        """A new dir with entry ``I/entry.js`` for job I (in a thread: it writes files)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="build-", dir=self.directory))
        try:
            for i, job in enumerate(jobs):
                (workdir / str(i)).mkdir()
                (workdir / str(i) / ENTRY_NAME).write_text(entry(job, source_root))
        except BaseException:  # a full disk: the dir goes now, not at the next start
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return workdir

    def remove_later(self, workdir: Path) -> None:
        """A build's scratch dir goes once its slot is given back and its outcome is out
        (thousands of files' delete would otherwise be waited out in the slot; one that
        a crash leaves behind is cleaned at the next start)."""
        removal = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, workdir, True))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    def clean(self) -> int:
        """Removes build dirs left by a process killed mid-build (kill -9, OOM). Only those
        older than twice the build deadline: no live build, here or in a process sharing
        the data dir, is that old."""
        if not self.directory.is_dir():
            return 0
        cutoff = time.time() - 2 * self.timeout_s
        removed = 0
        for entry in self.directory.iterdir():
            try:
                stale = entry.name.startswith("build-") and entry.stat().st_mtime < cutoff
            except OSError:
                continue
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed


def entry(job: BuildJob, source_root: Path) -> str:
    return entry_source(
        job.registrations,
        source_root,
        job.options.registry_name,
        version=job.written_version,
        mode=job.mode,
        module=job.options.module,
    )
