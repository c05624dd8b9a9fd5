"""Which file of a version a requested module name stands for, before any build.

A name is a JavaScript or TypeScript module of the version: a file with one of
the extensions esbuild resolves (or ``.mjs``, ``.cjs``, ``.mts``, ``.cts``) named
with or without its extension, or a directory's ``index`` file named by the
directory; where several match, esbuild's own precedence decides (a file before
a directory, ``.tsx`` before ``.ts`` before ``.jsx`` before ``.js``). Declaration
files, JSON, CSS, text files, a wrong-case name and anything whose real path
leaves the version (a symlink out) are no module: the request gets a 404 before
esbuild runs, and esbuild is then given the exact file, never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cachetools import LRUCache

from bundler.entry import Registration
from bundler.errors import UnknownModule

# esbuild's default resolve order: the first existing file wins for an extensionless name.
RESOLVE_EXTENSIONS = (".tsx", ".ts", ".jsx", ".js")
OTHER_EXTENSIONS = (".mjs", ".cjs", ".mts", ".cts")
MODULE_EXTENSIONS = RESOLVE_EXTENSIONS + OTHER_EXTENSIONS
# TypeScript declaration files hold types only: never a browser module.
DECLARATION_SUFFIXES = (".d.ts", ".d.mts", ".d.cts", ".d.tsx")


def is_module_file(path: str) -> bool:
    return path.endswith(MODULE_EXTENSIONS) and not path.endswith(DECLARATION_SUFFIXES)


def _candidates(name: str) -> Iterator[str]:
    if is_module_file(name):
        yield name
    for ext in RESOLVE_EXTENSIONS:
        yield name + ext
    for ext in RESOLVE_EXTENSIONS:
        yield f"{name}/index{ext}"


# (root, name) -> path: only found names (a version's files do not change once
# installed; a directory source may still gain a missing one).
_found: LRUCache[tuple[str, str], str] = LRUCache(maxsize=65536)


def _find(root: str, name: str) -> str | None:
    real_root = os.path.realpath(root)
    for candidate in _candidates(name):
        if not is_module_file(candidate):
            continue  # "x.d" + ".ts": a declaration file
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_root]) != real_root:
                return None  # a symlink out of the version: nothing there is ours
            return candidate
    return None


def resolve_module(root: Path, name: str) -> str | None:
    """The path under ``root`` that ``name`` stands for, or None."""
    key = (str(root), name)
    path = _found.get(key)
    if path is None:
        path = _find(*key)
        if path is not None:
            _found[key] = path
    return path


def resolve_modules(root: Path, version: str, names: Sequence[str]) -> tuple[Registration, ...]:
    """(name, file) for each requested name; UnknownModule names every one that is not."""
    found = [(name, resolve_module(root, name)) for name in names]
    missing = [name for name, path in found if path is None]
    if missing:
        raise UnknownModule(version, missing)
    return tuple((name, path) for name, path in found if path is not None)
