"""Which file of a version a requested module name stands for, before any build.

A name is a JavaScript or TypeScript module of the version: a file with one of
the extensions esbuild resolves (or ``.mjs``, ``.cjs``, ``.mts``, ``.cts``) named
with or without its extension, or a directory's ``index`` file named by the
directory; where several match, esbuild's own precedence decides (a file before
a directory, ``.tsx`` before ``.ts`` before ``.jsx`` before ``.js``). Declaration
files, JSON, CSS, text files, a wrong-case name and anything whose real path
leaves the version (a symlink out) are no module: the request gets a 404 before
esbuild runs, and esbuild is then given the exact file, never a guess. Where the
package's ``browser`` field swaps that file for another, the other is given.

A name may also be what the package publishes under its own name: the package
itself (``preact``) or a subpath of its ``exports`` map (``preact/hooks``); esbuild
then resolves it as an application importing it would, with browser conditions and
the ``browser`` field (through the version's ``node_modules/<name>`` link to itself).
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cachetools import LRUCache

from bundler.entry import PACKAGE_PREFIX, Registration
from bundler.errors import UnknownModule

# esbuild's default resolve order: the first existing file wins for an extensionless name.
RESOLVE_EXTENSIONS = (".tsx", ".ts", ".jsx", ".js")
OTHER_EXTENSIONS = (".mjs", ".cjs", ".mts", ".cts")
MODULE_EXTENSIONS = RESOLVE_EXTENSIONS + OTHER_EXTENSIONS
# TypeScript declaration files hold types only: never a browser module.
DECLARATION_SUFFIXES = (".d.ts", ".d.mts", ".d.cts", ".d.tsx")
# Most published names a 404 lists.
MAX_LISTED = 25
# Directory entries a near-miss suggestion compares against, at most (date-fns: 3,000).
MAX_NEAR_ENTRIES = 5000


def is_module_file(path: str) -> bool:
    return path.endswith(MODULE_EXTENSIONS) and not path.endswith(DECLARATION_SUFFIXES)


def _candidates(name: str) -> Iterator[str]:
    if is_module_file(name):
        yield name
    for ext in RESOLVE_EXTENSIONS:
        yield name + ext


def _index_candidates(name: str) -> Iterator[str]:
    for ext in RESOLVE_EXTENSIONS:
        yield f"{name}/index{ext}"


# esbuild's main fields for --platform=browser, in its order.
MAIN_FIELDS = ("browser", "module", "main")


def _directory_main(root: str, name: str) -> Iterator[str]:
    """What a directory with its own package.json stands for (preact's ``compat/``), as
    esbuild resolves ``./compat``: its first main field that names a file, that file's
    candidates; before the directory's index files."""
    if not os.path.isfile(os.path.join(root, name, "package.json")):
        return
    package = read_package_json(Path(root) / name)
    for field in MAIN_FIELDS:
        target = package.get(field)
        if not isinstance(target, str) or not target:
            continue
        path = os.path.normpath(os.path.join(name, target))
        if path.startswith("..") or os.path.isabs(path):
            continue
        yield from _candidates(path)
        yield from _index_candidates(path)


# (root, name) -> path: only found names (a version's files do not change once
# installed; a directory source may still gain a missing one).
_found: LRUCache[tuple[str, str], str] = LRUCache(maxsize=65536)
# package.json files parsed, by path and identity (read from threads too: locked).
PACKAGE_JSONS: LRUCache[tuple[str, int, int, int], dict[str, Any]] = LRUCache(maxsize=64)
PACKAGE_JSONS_LOCK = threading.Lock()


def _find(root: str, name: str) -> str | None:
    real_root = os.path.realpath(root)
    in_order = itertools.chain(
        _candidates(name), _directory_main(root, name), _index_candidates(name)
    )
    for candidate in in_order:
        if not is_module_file(candidate) or candidate.startswith(PACKAGE_PREFIX):
            continue  # "x.d" + ".ts": a declaration file
        path = os.path.join(root, candidate)
        if os.path.isfile(path):
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_root]) != real_root:
                return None  # a symlink out of the version: nothing there is ours
            return candidate
    return None


def resolve_module(root: Path, name: str) -> str | None:
    """The path under ``root`` that ``name`` stands for (a ``PACKAGE_PREFIX`` specifier
    for a published name), or None."""
    key = (str(root), name)
    path = _found.get(key)
    if path is None:
        path = _find(*key)
        if path is not None and not path.startswith(PACKAGE_PREFIX):
            package = read_package_json(root)
            path = _browser_swap(root, package, path) if package else path
        if path is None:
            path = _published(root, name)
        if path is not None:
            _found[key] = path
    return path


def resolve_modules(root: Path, version: str, names: Sequence[str]) -> tuple[Registration, ...]:
    """(name, file) for each requested name; UnknownModule names every one that is not,
    and says what the package publishes by name."""
    found = [(name, resolve_module(root, name)) for name in names]
    missing = [name for name, path in found if path is None]
    if missing:
        raise UnknownModule(version, missing, published_hint(root))
    return tuple((name, path) for name, path in found if path is not None)


def near_misses(root: Path, names: Sequence[str]) -> str:
    """What a 404 for ``names`` suggests instead ("" for nothing). A directory listing
    and a fuzzy match per name, milliseconds for a package of a thousand files: call it
    in a thread, never on the event loop (a flood of junk names would hold it)."""
    near = [
        s if len(names) == 1 else f"{s} (for {name})"
        for name in names
        if (s := near_miss(root, name))
    ]
    return f"; did you mean {', '.join(near)}?" if near else ""


def _stem(entry: str) -> str:
    for ext in MODULE_EXTENSIONS:
        if entry.endswith(ext):
            return entry[: -len(ext)]
    return entry


def near_miss(root: Path, name: str) -> str | None:
    """The module name one typo away from ``name`` that exists (``components/heor`` ->
    ``components/hero``), found segment by segment among the directory entries: a 404
    that says what to write instead. None when nothing is close."""
    directory, parts = root, []
    segments = name.split("/")
    for i, segment in enumerate(segments):
        try:
            entries = sorted(
                {_stem(e.name) for e in os.scandir(directory) if not e.name.startswith(".")}
            )
        except OSError:
            return None
        last = i == len(segments) - 1
        if segment not in entries:
            close = difflib.get_close_matches(segment, entries[:MAX_NEAR_ENTRIES], n=1)
            if not close:
                return None
            segment = close[0]
        parts.append(segment)
        directory = directory / segment
        if last:
            suggestion = "/".join(parts)
            # _find only (no shared cache): this runs in a worker thread.
            return suggestion if suggestion != name and _find(str(root), suggestion) else None
    return None


def read_package_json(root: Path) -> dict[str, Any]:
    """The version's package.json ({} when it has none, or an unreadable one), parsed
    once per file (by its inode, size and mtime): every module name a page asks for
    for the first time reads it, on the event loop, and date-fns's is 200 KB (1.8 ms
    to parse; a release's first seconds ask for hundreds of names). Shared: read it,
    never change it."""
    path = os.path.join(root, "package.json")
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with PACKAGE_JSONS_LOCK:
        cached = PACKAGE_JSONS.get(key)
    if cached is not None:
        return cached
    try:
        with open(path, "rb") as file:
            data = json.loads(file.read())
    except (OSError, ValueError):
        return {}
    parsed = data if isinstance(data, dict) else {}
    with PACKAGE_JSONS_LOCK:
        PACKAGE_JSONS[key] = parsed
    return parsed


def _browser_swap(root: Path, package: dict[str, Any], path: str) -> str | None:
    """The file the package's ``browser`` map puts in ``path``'s place (None: false, the
    file is Node-only)."""
    browser = package.get("browser")
    if not isinstance(browser, dict):
        return path
    stem = os.path.splitext(path)[0]
    for key, target in browser.items():
        if not isinstance(key, str) or not key.startswith("."):
            continue  # a package it replaces, not a file of its own
        if os.path.normpath(key) not in (path, stem):
            continue
        if target is False:
            return None
        if isinstance(target, str) and target.startswith("."):
            swapped = _find(str(root), os.path.normpath(target))
            return swapped if swapped is not None else path
    return path


def _exports_subpaths(exports: Any) -> list[str] | None:
    """The subpaths (".", "./hooks", "./locale/*") an exports map publishes; None: no map."""
    if exports is None:
        return None
    if isinstance(exports, dict) and any(str(k).startswith(".") for k in exports):
        return [k for k, v in exports.items() if k.startswith(".") and v is not None]
    return ["."]  # a string, an array or conditions: the package itself only


def _subpath_published(subpath: str, published: list[str]) -> bool:
    for key in published:
        if key == subpath:
            return True
        if key.count("*") == 1:
            prefix, suffix = key.split("*")
            if (
                subpath.startswith(prefix)
                and subpath.endswith(suffix)
                and len(subpath) > len(prefix) + len(suffix)
            ):
                return True
    return False


def _published(root: Path, name: str) -> str | None:
    """``PACKAGE_PREFIX + name`` when ``name`` is the package or one of its published
    subpaths, and the version links itself (extract.link_self)."""
    package = read_package_json(root)
    own = package.get("name")
    if not isinstance(own, str) or not (name == own or name.startswith(own + "/")):
        return None
    if not (root / "node_modules" / own).is_symlink():
        return None
    subpath = "." + name[len(own) :]
    published = _exports_subpaths(package.get("exports"))
    if published is None:  # no exports map: the package and any module file by path
        if subpath == "." or resolve_module(root, subpath[2:]) is not None:
            return PACKAGE_PREFIX + name
        return None
    if subpath.endswith("/package.json") or not _subpath_published(subpath, published):
        return None
    return PACKAGE_PREFIX + name


def self_link(root: Path) -> str | None:
    """``node_modules/<its name>`` when the version is linked to itself there
    (bundler.extract.link_self): a second path to each of its files, which esbuild reaches
    through a name the package publishes."""
    name = read_package_json(root).get("name")
    if not isinstance(name, str):
        return None
    link = root / "node_modules" / name
    if link.is_symlink() and link.resolve() == root.resolve():
        return f"node_modules/{name}"
    return None


def published_hint(root: Path) -> str:
    """What a 404 adds: the names the package publishes (none for a source without a name)."""
    package = read_package_json(root)
    own = package.get("name")
    if not isinstance(own, str) or not (root / "node_modules" / own).is_symlink():
        return ""
    published = _exports_subpaths(package.get("exports")) or ["."]
    names = [own + key[1:] for key in published if not key.endswith("package.json")]
    listed = ", ".join(names[:MAX_LISTED]) + (", ..." if len(names) > MAX_LISTED else "")
    return f"; {own} publishes {listed}, and its module files by path (e.g. dist/index.js)"
