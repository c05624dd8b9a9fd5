"""What esbuild may look at to resolve an import, and what it finds there.

An import's resolution is a function of the specifier, the importer's place and what
exists at the paths esbuild tries: ``./x`` is ``x``, then ``x`` with each extension,
then ``x/package.json``'s main fields, then ``x/index`` with each extension; a bare
``pkg/sub`` is tried in ``node_modules/pkg`` of every directory up from the importer,
through that package's ``package.json``; every package.json and tsconfig.json above a
file may remap or reconfigure it (``browser``, ``exports``, ``imports``, ``paths``,
``sideEffects``, ``type``). ``candidates`` lists a superset of those paths; ``state``
says what is at one (nothing, a directory, a file, a symlink and its target, and for a
package.json the fields esbuild reads, never its ``version``). Two versions in which
every candidate of every import is in the same state resolve every import alike. A
specifier of a form not modelled here (``#imports``, absolute paths, URLs) has no
candidates: its bundle is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

# esbuild's default resolveExtensions, and the module extensions it may be pointed at.
EXTENSIONS = (".tsx", ".ts", ".jsx", ".js", ".css", ".json", ".mjs", ".cjs", ".mts", ".cts")
# An import of x.js may be answered by x.ts (TypeScript's convention, which esbuild follows).
TS_REWRITES = {
    ".js": (".ts", ".tsx"),
    ".jsx": (".ts", ".tsx"),
    ".mjs": (".mts",),
    ".cjs": (".cts",),
}
# What esbuild reads of a package.json: not "version", "description", "scripts", ...
PACKAGE_FIELDS = ("name", "main", "module", "browser", "exports", "imports", "sideEffects", "type")
MAIN_FIELDS = ("browser", "module", "main")
CONFIG_FILES = ("package.json", "tsconfig.json", "jsconfig.json")
# CSS names a file relative to itself even without "./" (url(a.png)).
CSS_KINDS = frozenset({"url-token", "import-rule", "composes-from"})


class Probe:
    """The states of one version's paths, each looked at once (a sweep over hundreds of
    bundles asks for the same package.json thousands of times). Runs in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._states: dict[str, str] = {}
        self._packages: dict[str, dict[str, object] | None] = {}

    def state(self, path: str) -> str:
        known = self._states.get(path)
        if known is None:
            known = self._states[path] = self._look(path)
        return known

    def _look(self, path: str) -> str:
        full = self.root / path
        try:
            if full.is_symlink():
                return "l:" + os.readlink(full)
            if full.is_dir():
                return "d"
            if not full.is_file():
                return "-"
            name = posixpath.basename(path)
            if name == "package.json":
                return "p:" + _digest(json.dumps(self._relevant(path), sort_keys=True).encode())
            if name in CONFIG_FILES:
                return "c:" + _digest(full.read_bytes())
            return "f"
        except OSError:
            return "?"

    def package(self, path: str) -> dict[str, object] | None:
        """The fields esbuild reads of the package.json at ``path`` (None: not one)."""
        if path not in self._packages:
            self._packages[path] = self._relevant(path)
        return self._packages[path]

    def _relevant(self, path: str) -> dict[str, object] | None:
        try:
            data = json.loads((self.root / path).read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return {"": data}
        return {field: data[field] for field in PACKAGE_FIELDS if field in data}

    def digest(self, paths: Iterable[str]) -> str:
        """One SHA-256 over the paths and their states, in a fixed order."""
        h = hashlib.sha256()
        for path in sorted(set(paths)):
            h.update(path.encode() + b"\0" + self.state(path).encode() + b"\n")
        return h.hexdigest()

    # -------------------------------------------------------------- candidates

    def file_candidates(self, base: str) -> list[str]:
        """Where esbuild may look for ``base`` as a file or a directory."""
        out = [base, *(base + ext for ext in EXTENSIONS)]
        stem, ext = posixpath.splitext(base)
        out += [stem + other for other in TS_REWRITES.get(ext, ())]
        package = posixpath.join(base, "package.json")
        out += [package, *(posixpath.join(base, "index" + ext) for ext in EXTENSIONS)]
        fields = self.package(package) if self.state(base) == "d" else None
        for field in MAIN_FIELDS:
            value = (fields or {}).get(field)
            if isinstance(value, str):
                target = posixpath.normpath(posixpath.join(base, value))
                out += [target, *(target + ext for ext in EXTENSIONS)]
                out += [posixpath.join(target, "index" + ext) for ext in EXTENSIONS]
        return out

    def config_chain(self, path: str) -> list[str]:
        """Every package.json and tsconfig.json that may configure ``path``."""
        out = []
        directory = posixpath.dirname(path)
        while True:
            out += [posixpath.join(directory, name) for name in CONFIG_FILES]
            if not directory:
                return out
            directory = posixpath.dirname(directory)

    def candidates(self, importer: str, specifier: str, kind: str) -> list[str] | None:
        """Where resolving ``specifier`` from ``importer`` may look; None: a form not
        modelled (the bundle is rebuilt)."""
        if not specifier or specifier.startswith(("/", "#")) or ":" in specifier:
            return None
        if "?" in specifier or "\\" in specifier:
            return None
        directory = posixpath.dirname(importer)
        relative = specifier.startswith(("./", "../")) or specifier in (".", "..")
        out: list[str] = []
        if relative or kind in CSS_KINDS:
            base = posixpath.normpath(posixpath.join(directory, specifier))
            if base == ".." or base.startswith("../"):
                return None
            out += self.file_candidates("" if base == "." else base)
            if relative:
                return out
        return out + self._package_candidates(directory, specifier)

    def _package_candidates(self, directory: str, specifier: str) -> list[str]:
        parts = specifier.split("/")
        count = 2 if specifier.startswith("@") else 1
        name, sub = "/".join(parts[:count]), "/".join(parts[count:])
        out = []
        while True:
            modules = posixpath.join(directory, "node_modules")
            package = posixpath.join(modules, name)
            out += [modules, package, posixpath.join(package, "package.json")]
            if self.state(package) != "-":
                out += self.file_candidates(posixpath.join(package, sub) if sub else package)
            if not directory:
                return out
            directory = posixpath.dirname(directory)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
