"""What a request could name in a version: every JavaScript module, with the file it is.

Declaration files and what package.json marks as Node-only never are candidates. The
package's declared entry points (``exports``, ``module``, ``browser``, ``main``) are
found here too: the ranking puts them before the rest. The extraction child (bundler.unpack)
lists candidates while it writes the files, so nothing here imports asyncio.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.entry import Registration
from bundler.errors import BadRequest
from bundler.resolve import (
    DECLARATION_SUFFIXES,
    MODULE_EXTENSIONS,
    RESOLVE_EXTENSIONS,
    read_package_json,
)
from bundler.spec import validate_module

# Conditions of an `exports` map that esbuild takes for an import in a browser build.
BROWSER_CONDITIONS = ("browser", "import", "module", "default")


@dataclass(frozen=True)
class Candidates:
    """Every name a page could ask for, with the file it names (esbuild's precedence)."""

    files: dict[str, str]  # name -> path under the root
    sizes: dict[str, int]  # path -> bytes on disk
    excluded: dict[str, int]  # why files are not candidates -> how many


def _strip(path: str) -> str:
    return os.path.normpath(path.removeprefix("./")) if path else ""


def _export_targets(
    node: Any, conditions: tuple[str, ...] = ()
) -> Iterable[tuple[str, tuple[str, ...]]]:
    """(target, the conditions leading to it) for every string target of an exports map."""
    if isinstance(node, str):
        yield node, conditions
    elif isinstance(node, list):
        for item in node:
            yield from _export_targets(item, conditions)
    elif isinstance(node, dict):
        for key, value in node.items():
            condition = () if key.startswith(".") else (key,)
            yield from _export_targets(value, conditions + condition)


def node_only_paths(package: Mapping[str, Any]) -> set[str]:
    """Files the package itself says are not for browsers: its `bin` scripts, files its
    `browser` field replaces or disables, and `exports` targets reached only under `node`."""
    out: set[str] = set()
    bins = package.get("bin")
    if isinstance(bins, str):
        out.add(_strip(bins))
    elif isinstance(bins, dict):
        out.update(_strip(v) for v in bins.values() if isinstance(v, str))
    browser = package.get("browser")
    if isinstance(browser, dict):
        out.update(_strip(k) for k in browser if isinstance(k, str) and k.startswith("."))
    node_targets: set[str] = set()
    other_targets: set[str] = set()
    for target, conditions in _export_targets(package.get("exports")):
        if "types" in conditions:
            continue
        (node_targets if "node" in conditions else other_targets).add(_strip(target))
    out.update(node_targets - other_targets)
    return out


def _browser_target(node: Any) -> str | None:
    """The file an ``import`` of one exports entry resolves to in a browser build: the
    first of its conditions, in the map's order, that esbuild takes there."""
    if isinstance(node, str):
        return node
    if isinstance(node, list):
        for item in node:
            target = _browser_target(item)
            if target is not None:
                return target
    if isinstance(node, dict):
        for key, value in node.items():
            if key in BROWSER_CONDITIONS:
                target = _browser_target(value)
                if target is not None:
                    return target
    return None


def entry_point_paths(package: Mapping[str, Any]) -> list[str]:
    """The package's declared public files, as a browser build would take them."""
    paths: list[str] = []
    exports = package.get("exports")
    if isinstance(exports, dict) and any(k.startswith(".") for k in exports):
        targets = [_browser_target(v) for k, v in exports.items() if "*" not in k]
    else:
        targets = [_browser_target(exports)]
    paths += [t for t in targets if t and "*" not in t]
    for key in ("browser", "module", "main"):
        value = package.get(key)
        if isinstance(value, str):
            paths.append(value)
    stripped = (_strip(p) for p in paths)
    return list(dict.fromkeys(p for p in stripped if p and not p.startswith("..")))


def list_candidates(root: Path) -> Candidates:
    """Every module of a version under every name esbuild would resolve to it.

    ``components/hero.js`` is named ``components/hero.js`` and ``components/hero``;
    ``components/banner/index.js`` also ``components/banner``. Where two files claim
    one name, esbuild's own precedence decides (a file before a directory's index,
    .ts before .js).
    """
    return candidates_from(walk_files(root), read_package_json(root))


def walk_files(root: Path) -> Iterator[tuple[str, int]]:
    """(path under root, size) of every file a module could be: dot files, dot folders and
    node_modules are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "node_modules")
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for filename in filenames:
            if filename.startswith(".") or not filename.endswith(MODULE_EXTENSIONS):
                continue
            try:
                size = os.stat(os.path.join(dirpath, filename)).st_size
            except OSError:
                continue
            yield (f"{rel_dir}/{filename}" if rel_dir else filename), size


def candidates_from(files: Iterable[tuple[str, int]], package: Mapping[str, Any]) -> Candidates:
    """The candidates among ``files`` ((path, size), as walk_files gives them); also used
    by the extraction process, which knows every file without walking the disk."""
    node_only = node_only_paths(package)
    claims: dict[str, tuple[int, str]] = {}
    sizes: dict[str, int] = {}
    excluded: collections.Counter[str] = collections.Counter()

    def claim(name: str, rank: int, path: str) -> None:
        try:
            validate_module(name, max_chars=10_000)
        except BadRequest:
            return  # a name no request could use
        if name not in claims or rank < claims[name][0]:
            claims[name] = (rank, path)

    for path, size in files:
        rel_dir, _, filename = path.rpartition("/")
        stem, ext = os.path.splitext(filename)
        if filename.startswith(".") or ext not in MODULE_EXTENSIONS:
            continue
        if any(p.startswith(".") or p == "node_modules" for p in rel_dir.split("/") if p):
            continue
        if filename.endswith(DECLARATION_SUFFIXES):
            excluded["declaration"] += 1
            continue
        if path in node_only or path[: -len(ext)] in node_only:
            excluded["node_only"] += 1
            continue
        sizes[path] = size
        claim(path, 0, path)
        if ext in RESOLVE_EXTENSIONS:
            order = RESOLVE_EXTENSIONS.index(ext)
            claim(path[: -len(ext)], 1 + order, path)
            if stem == "index" and rel_dir:
                claim(rel_dir, 10 + order, path)
    files_by_name = {name: path for name, (_, path) in sorted(claims.items())}
    return Candidates(files=files_by_name, sizes=sizes, excluded=dict(excluded))


def list_registrations(root: Path) -> list[Registration]:
    """(name, file) for every candidate name, sorted by name."""
    return sorted(list_candidates(root).files.items())
