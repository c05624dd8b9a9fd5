"""What a version's source is, as one SHA-256: part of every cache key and stored entry.

A version name says which release a page wants; it does not say which bytes. Two
sources can both have a 1.0.0 (a user's components after the bundled examples, two
deployments sharing one Redis), so a bundle, a source map or a fallback is only ever
used with the exact content it was built from. The digest covers every file's path
and bytes; a tarball's is taken while it is extracted (``facts.json``), a directory's
by reading it once per process.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from bundler.extract import read_facts
from bundler.flight import SingleFlight


def source_digest(root: Path) -> str:
    """SHA-256 over every file under ``root``: relative paths and contents, in walk order."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def version_digest(root: Path) -> str:
    """source_digest, from what the extraction recorded when it can (no second read)."""
    facts = read_facts(root)
    if facts is not None and isinstance(facts.get("digest"), str):
        return str(facts["digest"])
    return source_digest(root)


class Digests:
    """Each version's digest, taken once (a directory is read once per process; a pulled
    version's is read from its facts) however many requests ask at once."""

    def __init__(self, use: Callable[[str], AbstractAsyncContextManager[Path]]) -> None:
        self._use = use
        self._known: dict[str, str] = {}
        self._flight: SingleFlight[str, str] = SingleFlight("digest")

    def known(self, version: str) -> str | None:
        return self._known.get(version)

    async def get(self, version: str) -> str:
        known = self._known.get(version)
        if known is not None:
            return known
        return await self._flight.do(version, lambda: self._take(version))

    async def _take(self, version: str) -> str:
        async with self._use(version) as root:
            made = await asyncio.to_thread(version_digest, root)
        self._known[version] = made
        return made

    def forget(self, version: str) -> None:
        """The version left the disk: a later pull may bring other bytes."""
        self._known.pop(version, None)

    async def close(self) -> None:
        await self._flight.close()
