"""What a tailored bundle was built from, recorded when it is built, and the decision
whether another version would build it byte for byte alike (bundler.carry).

The record is what esbuild's metafile says the bundle depends on, and nothing of its
version: its input files, each import as written (importer, specifier, kind), the
entry's registrations (names to files, from bundler.resolve) and esbuild's version. It
costs a build next to nothing (the metafile is parsed already). The decision compares
the two versions: each input's bytes (SHA-256), the facts every input's imports depend
on (bundler.carry.probes), and the new version's registrations. Each file's digest and
facts are taken once per version (``Look``): bundles share most of their files, so
after a release's first decisions one costs a look-up per input. It needs the version the bundle was built for on disk, as it is
in a release's first minutes: without it, the bundle is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from bundler.carry.probes import Probe
from bundler.entry import PACKAGE_PREFIX, Registration

logger = logging.getLogger(__name__)

FORMAT = 2
# A pseudo-input esbuild names for a module a browser field turns off: no file.
DISABLED = "(disabled):"

# Files' SHA-256 by path and identity: a version's files are read once for all the
# bundles decided (a lodash-es bundle has a hundred inputs, most shared).
_HASHED: LRUCache[tuple[str, int, int, int], str] = LRUCache(maxsize=65536)
_HASHED_LOCK = threading.Lock()


class FileDigests:
    """The SHA-256 of one version's files (in a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, path: str) -> str | None:
        full = self.root / path
        try:
            st = full.stat()
            identity = (str(full), st.st_ino, st.st_mtime_ns, st.st_size)
            with _HASHED_LOCK:
                known = _HASHED.get(identity)
            if known is None:
                known = hashlib.sha256(full.read_bytes()).hexdigest()
                with _HASHED_LOCK:
                    _HASHED[identity] = known
            return known
        except OSError:
            return None


class Look:
    """One version's files as the decision sees them, each read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.probe = Probe(root)
        self.digests = FileDigests(root)
        self._facts: dict[tuple[str, tuple[tuple[str, ...], ...]], str | None] = {}
        self._digests: dict[str, str | None] = {}
        self._sizes: dict[str, int | None] = {}

    def file_facts(self, path: str, edges: Sequence[Sequence[str]]) -> str | None:
        """The digest of the facts one file's imports (and its configuration) depend on;
        None: one of them cannot be modelled."""
        key = (path, tuple(tuple(e) for e in edges))
        if key not in self._facts:
            facts = probe_facts(self.probe, [path], edges, [])
            self._facts[key] = None if facts is None else self.probe.digest(facts)
        return self._facts[key]

    def size(self, path: str) -> int | None:
        """The file's size (None: no such file), taken once: files of other sizes differ
        without being read (a major release changes most of them)."""
        if path not in self._sizes:
            try:
                self._sizes[path] = (self.root / path).stat().st_size
            except OSError:
                self._sizes[path] = None
        return self._sizes[path]

    def digest(self, path: str) -> str | None:
        """The file's SHA-256 (None: no such file), taken once."""
        if path not in self._digests:
            self._digests[path] = self.digests.get(path)
        return self._digests[path]


def probe_facts(
    probe: Probe,
    files: Sequence[str],
    edges: Sequence[Sequence[str]],
    registrations: Sequence[Registration],
) -> list[str] | None:
    """Every fact that decides how the imports resolve (bundler.carry.probes); None: one
    that cannot be modelled."""
    facts: list[str] = []
    for path in files:
        facts += probe.config_chain(path)
    for importer, specifier, kind in edges:
        found = probe.candidates(importer, specifier, kind)
        if found is None:
            return None
        facts += found
    for _, path in registrations:
        if path.startswith(PACKAGE_PREFIX):  # the entry imports it by name, from the root
            found = probe.candidates("", path.removeprefix(PACKAGE_PREFIX), "entry")
            if found is None:
                return None
            facts += found
    return None if any(fact.startswith("doubt ") for fact in facts) else facts


def make_record(
    meta: dict[str, Any],
    inputs: Sequence[str],
    entry_key: str,
    registrations: Sequence[Registration],
    esbuild_version: str,
) -> bytes:
    """The record of one bundle (compressed JSON); b"" when it cannot be told what the
    bundle depends on (it is then never carried)."""
    files = sorted(p for p in inputs if p != entry_key and not p.startswith(DISABLED))
    if any(p.startswith("../") or p.startswith("/") for p in files):
        return b""
    edges: list[list[str]] = []
    for path in files:
        for record in meta.get("inputs", {}).get(path, {}).get("imports", []):
            original = record.get("original")
            if not isinstance(original, str):
                return b""
            if record.get("external"):
                continue  # left as written: no file is looked at
            edges.append([path, original, str(record.get("kind", ""))])
    record = {
        "format": FORMAT,
        "esbuild": esbuild_version,
        "files": files,
        "edges": edges,
        "registrations": [list(r) for r in registrations],
    }
    return zlib.compress(json.dumps(record, separators=(",", ":")).encode(), 6)


def decide(
    raw: bytes,
    old: Look,
    new: Look,
    esbuild_version: str,
    registrations: Sequence[Registration] | None,
) -> str | None:
    """None when the version ``new`` looks at builds the bundle recorded in ``raw`` (built
    from ``old``) byte for byte alike; else why not, in a word (bundler_carryover's
    reasons). ``registrations``: what the requested names resolve to in ``new`` (None:
    one of them is unknown there)."""
    if not raw:
        return "unrecorded"
    try:
        record = json.loads(zlib.decompress(raw))
    except (ValueError, zlib.error):
        return "unrecorded"
    if record.get("format") != FORMAT:
        return "unrecorded"
    if record["esbuild"] != esbuild_version:
        return "esbuild"
    files: list[str] = record["files"]
    for path in files:
        size = new.size(path)
        if size is None or size != old.size(path):
            logger.debug("an input changed", extra={"file": path})
            return "changed"
        digest = new.digest(path)
        if digest is None or digest != old.digest(path):
            logger.debug("an input changed", extra={"file": path})
            return "changed"
    wanted = [(str(name), str(path)) for name, path in record["registrations"]]
    if registrations is None or [tuple(r) for r in registrations] != wanted:
        return "entry"
    edges: dict[str, list[Sequence[str]]] = {path: [] for path in files}
    for edge in record["edges"]:
        edges.setdefault(edge[0], []).append(edge)
    # Each file's facts are taken once per version (bundles share most of their files):
    # a decision is then a look-up per file.
    for path in files:
        before, after = old.file_facts(path, edges[path]), new.file_facts(path, edges[path])
        if before is None or after is None:
            return "unmodelled"
        if before != after:
            return "resolution"
    before_entry = probe_facts(old.probe, [], [], wanted)
    after_entry = probe_facts(new.probe, [], [], wanted)
    if before_entry is None or after_entry is None:
        return "unmodelled"
    if old.probe.digest(before_entry) != new.probe.digest(after_entry):
        return "resolution"
    return None
