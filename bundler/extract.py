"""Atomic install of a version's source, extracted by a child process (bundler.unpack).

Layout under ``<data>/sources``:

    <version>/src/        the source root (an npm tarball's "package/" folder is stripped)
    <version>/facts.json  its digest and module candidates, taken during extraction
    <version>/.complete   written last, before the install rename
    .tmp-<version>-<rand>/ work in progress; held under an flock by its owner
    .lock                 serialises installs between processes sharing the data dir
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bundler.errors import SourceUnavailable
from bundler.fsutil import fsync_dir
from bundler.npm import valid_package_name
from bundler.resolve import read_package_json
from bundler.unpack import (
    FACTS,
    ExtractLimits,
    UnsafeTarball,
    extract_tarball,
    strip_single_top_folder,
    write_facts,
)

__all__ = ["ExtractLimits", "UnsafeTarball"]

logger = logging.getLogger(__name__)

SRC = "src"
COMPLETE = ".complete"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
OWNER_LOCK = ".owner"


def installed_root(sources_dir: Path, version: str) -> Path | None:
    version_dir = sources_dir / version
    return version_dir / SRC if (version_dir / COMPLETE).exists() else None


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def clean_stale(sources_dir: Path) -> list[str]:
    """Remove work dirs whose owner died (its flock is free) and leftover trash."""
    removed: list[str] = []
    if not sources_dir.is_dir():
        return removed
    for entry in sources_dir.iterdir():
        if entry.name.startswith(TRASH_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        elif entry.name.startswith(TMP_PREFIX) and entry.is_dir():
            with _flock(entry / OWNER_LOCK, blocking=False) as free:
                if free:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
    return removed


class WorkDir:
    """A private work directory under the sources dir, flocked while its owner lives.

    A crash leaves it behind with its lock released; clean_stale() removes it at
    the next start without touching the work of a live process sharing the dir.
    """

    def __init__(self, sources_dir: Path, version: str) -> None:
        sources_dir.mkdir(parents=True, exist_ok=True)
        self.sources_dir = sources_dir
        self.version = version
        self.path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}-", dir=sources_dir))
        self._fd = os.open(self.path / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.unlock()

    def unlock(self) -> None:
        """Gives up ownership, leaving the dir: what its owner's death does (clean_stale
        then removes it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def install(self, tarball: Path, limits: ExtractLimits) -> Path:
        """Extract ``tarball`` and install it as the version; returns its source root."""
        content = self._content()
        write_facts(content, extract_tarball(tarball, content, limits), self.path / FACTS)
        return self._finish()

    async def install_async(
        self,
        tarball: Path,
        limits: ExtractLimits,
        timeout_s: float,
        dependencies: Callable[[Path], Awaitable[None]] | None = None,
        phases: dict[str, float] | None = None,
    ) -> Path:
        """``install`` with the extraction in a child process: a package of thousands of
        files costs seconds of Python, which must not hold the GIL the event loop needs.
        ``dependencies`` installs what the unpacked package needs into its node_modules
        (an npm source) before the version is complete. ``phases`` gains the seconds
        each part took (extract, dependencies, publish)."""
        phases = {} if phases is None else phases
        started = time.perf_counter()
        content = await asyncio.to_thread(self._content)
        await _extract_in_child(tarball, content, limits, timeout_s)
        root = await asyncio.to_thread(self._stage)
        phases["extract"] = time.perf_counter() - started
        if dependencies is not None:
            started = time.perf_counter()
            await dependencies(root)
            phases["dependencies"] = time.perf_counter() - started
        started = time.perf_counter()
        published = await asyncio.to_thread(self._publish)
        phases["publish"] = time.perf_counter() - started
        return published

    def _content(self) -> Path:
        content = self.path / "content"
        content.mkdir()
        return content

    def _finish(self) -> Path:
        self._stage()
        return self._publish()

    def _stage(self) -> Path:
        """The unpacked package moved to its place in the version; returns its root."""
        version_dir = self.path / "version"
        version_dir.mkdir()
        os.rename(strip_single_top_folder(self.path / "content"), version_dir / SRC)
        if (self.path / FACTS).exists():
            os.rename(self.path / FACTS, version_dir / FACTS)
        return version_dir / SRC

    def _publish(self) -> Path:
        version_dir = self.path / "version"
        link_self(version_dir / SRC)
        (version_dir / COMPLETE).write_text(self.version + "\n")
        fsync_dir(version_dir)
        sources_dir = self.sources_dir
        with _flock(sources_dir / ".lock"):
            existing = installed_root(sources_dir, self.version)
            if existing is not None:  # another process won the race; its copy is the same
                return existing
            target = sources_dir / self.version
            if target.exists():  # an incomplete leftover: move it out of the way
                os.rename(target, sources_dir / f"{TRASH_PREFIX}{self.version}-{os.getpid()}")
            os.rename(version_dir, target)
            fsync_dir(sources_dir)
            return target / SRC


def link_self(root: Path) -> str | None:
    """``node_modules/<its name>`` -> the package itself, so that its modules importing it
    by name (``preact/compat`` imports ``preact``) resolve to it, through its
    ``exports`` and ``browser`` fields, as they would in an application that depends on
    it; and so that a page may ask for the package by name. Returns the name linked."""
    name = read_package_json(root).get("name")
    if not isinstance(name, str) or not valid_package_name(name):
        return None
    link = root / "node_modules" / name
    if os.path.lexists(link):
        return name if link.is_symlink() else None  # the package ships its own copy
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/".join([".."] * (name.count("/") + 1)), link)
    return name


async def _extract_in_child(
    tarball: Path, dest: Path, limits: ExtractLimits, timeout_s: float
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bundler.unpack",
        str(tarball),
        str(dest),
        json.dumps(dataclasses.asdict(limits)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        raise SourceUnavailable(
            f"extracting the source tarball took longer than {timeout_s:g} s"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode == 0:
        return
    try:
        report = json.loads(out)
    except ValueError:
        logger.error(
            "extraction process failed",
            extra={"returncode": proc.returncode, "stderr": err.decode(errors="replace")[-2000:]},
        )
        raise SourceUnavailable("the source tarball could not be extracted") from None
    kind = UnsafeTarball if report.get("unsafe") else SourceUnavailable
    raise kind(str(report.get("message", "the source tarball could not be extracted")))


def remove_version(sources_dir: Path, version: str) -> None:
    """Move out of the way first (atomic), so no reader sees a half-deleted version."""
    target = sources_dir / version
    trash = sources_dir / f"{TRASH_PREFIX}{version}-{os.getpid()}"
    with _flock(sources_dir / ".lock"):
        if not target.exists():
            return
        os.rename(target, trash)
    shutil.rmtree(trash, ignore_errors=True)


def fold_into_digest(root: Path, extra: Path) -> None:
    """The version's digest covers ``extra`` too (an npm source's installed dependency
    tree, so a fallback stored for other dependencies is not taken for this one)."""
    facts_file = root.parent / FACTS
    try:
        facts = json.loads(facts_file.read_text())
        added = hashlib.sha256(extra.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return
    facts["digest"] = hashlib.sha256(f"{facts['digest']}:{added}".encode()).hexdigest()
    facts_file.write_text(json.dumps(facts))


def read_facts(root: Path) -> dict[str, Any] | None:
    """The facts an extraction wrote for this installed version (None: a directory
    source, or a version installed before facts were written)."""
    if root.name != SRC:
        return None
    try:
        facts: dict[str, Any] = json.loads((root.parent / FACTS).read_text())
    except (OSError, ValueError):
        return None
    return facts
