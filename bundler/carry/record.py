"""What a tailored bundle was built from, recorded when it is built, and the decision
whether another version would build it byte for byte alike (bundler.carry).

The record holds what the bundle depends on, and nothing of its version: each input
file's SHA-256, each import (importer, specifier as written, kind) from esbuild's
metafile, one digest over the state of every path those imports' resolution may look at
(bundler.carry.probes) and every package.json and tsconfig.json above an input, the
entry's registrations (names to files, from bundler.resolve) and esbuild's version.
Another version builds the same bundle when its files have the same bytes, the same
probe digest, the same registrations and the same esbuild: the decision needs only that
version's files, never the version the bundle was built for.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bundler.carry.probes import Probe
from bundler.entry import PACKAGE_PREFIX, Registration

FORMAT = 1
# A pseudo-input esbuild names for a module a browser field turns off: no file.
DISABLED = "(disabled):"


class FileDigests:
    """The SHA-256 of one version's files, each read once (in a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._known: dict[str, str | None] = {}

    def get(self, path: str) -> str | None:
        if path not in self._known:
            try:
                self._known[path] = hashlib.sha256((self.root / path).read_bytes()).hexdigest()
            except OSError:
                self._known[path] = None
        return self._known[path]


def probe_paths(
    probe: Probe,
    files: Sequence[str],
    edges: Sequence[Sequence[str]],
    registrations: Sequence[Registration],
) -> list[str] | None:
    """Every path whose state decides how the imports resolve; None: one that cannot be
    modelled."""
    paths: list[str] = []
    for path in files:
        paths += probe.config_chain(path)
    for importer, specifier, kind in edges:
        found = probe.candidates(importer, specifier, kind)
        if found is None:
            return None
        paths += found
    for _, path in registrations:
        if path.startswith(PACKAGE_PREFIX):  # the entry imports it by name, from the root
            found = probe.candidates("", path.removeprefix(PACKAGE_PREFIX), "entry")
            if found is None:
                return None
            paths += found
    return paths


def make_record(
    meta: dict[str, Any],
    inputs: Sequence[str],
    entry_key: str,
    root: Path,
    registrations: Sequence[Registration],
    esbuild_version: str,
) -> bytes:
    """The record of one bundle (compressed JSON); b"" when it cannot be told what the
    bundle depends on (it is then never carried)."""
    files = sorted(p for p in inputs if p != entry_key and not p.startswith(DISABLED))
    if any(p.startswith("../") or p.startswith("/") for p in files):
        return b""
    digests = FileDigests(root)
    edges: list[list[str]] = []
    for path in files:
        for record in meta.get("inputs", {}).get(path, {}).get("imports", []):
            original = record.get("original")
            if not isinstance(original, str):
                return b""
            if record.get("external"):
                continue  # left as written: no file is looked at
            edges.append([path, original, str(record.get("kind", ""))])
    probe = Probe(root)
    paths = probe_paths(probe, files, edges, registrations)
    if paths is None or any(probe.state(p).startswith("c:") for p in paths):
        # tsconfig.json may extend files outside what is recorded: rebuilt, never carried.
        return b""
    hashed = {path: digests.get(path) for path in files}
    if any(digest is None for digest in hashed.values()):
        return b""
    record = {
        "format": FORMAT,
        "esbuild": esbuild_version,
        "files": hashed,
        "edges": edges,
        "probes": probe.digest(paths),
        "registrations": [list(r) for r in registrations],
    }
    return zlib.compress(json.dumps(record, separators=(",", ":")).encode(), 6)


def decide(
    raw: bytes,
    probe: Probe,
    digests: FileDigests,
    esbuild_version: str,
    registrations: Callable[[], Sequence[Registration]],
) -> str | None:
    """None when the version ``probe`` and ``digests`` look at builds the recorded bundle
    byte for byte alike; else why not, in a word (the reasons of bundler_carryover)."""
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
    for path, digest in record["files"].items():
        if digests.get(path) != digest:
            return "changed"
    wanted = [tuple(r) for r in record["registrations"]]
    try:
        if [tuple(r) for r in registrations()] != wanted:
            return "entry"
    except Exception:  # an unknown name now, or an unreadable package.json
        return "entry"
    paths = probe_paths(probe, list(record["files"]), record["edges"], wanted)
    if paths is None or probe.digest(paths) != record["probes"]:
        return "resolution"
    return None
