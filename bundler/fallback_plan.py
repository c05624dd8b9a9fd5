"""What goes into a version's fallback: candidates, their order, and a byte budget.

A fallback registers modules pages use, not every file of a package. Candidates
are the names a request could use for a JavaScript module of the version
(declaration files and what package.json marks as Node-only never are). They
are ranked, most wanted first:

1. the operator's list (``--fallback-modules``), in its order;
2. modules of the most requested combinations (the versionless popularity
   sketch: at a release, the previous version's traffic chooses);
3. the package's declared entry points (``exports``, ``module``, ``browser``, ``main``);
4. every other file, shallow paths and ES modules first.

``select`` then takes them in that order while the bundle stays within its
byte budget, from the per-file sizes esbuild's metafile reports for a survey
build (bundler.survey). A module that does not build, or imports something that
does not, is left out with its reason; so is one that does not fit.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.entry import Registration
from bundler.errors import BadRequest, ConfigError
from bundler.resolve import (
    DECLARATION_SUFFIXES,
    MODULE_EXTENSIONS,
    RESOLVE_EXTENSIONS,
    read_package_json,
)
from bundler.spec import validate_module, validate_version

logger = logging.getLogger(__name__)

# Conditions of an `exports` map that esbuild takes for an import in a browser build.
BROWSER_CONDITIONS = ("browser", "import", "module", "default")
# A survey build looks at candidates whose source files add up to this many times the
# budget (minified output is about half of source, and shared files count once), so
# that the selection can pass over a costly module for cheaper ones further down;
# further (4 times) only while what it found leaves the budget unfilled.
SURVEY_SOURCE_FACTOR = 3
# The service's quick first part of a fallback surveys only this far: it usually
# builds and fits, and is then usable at once (date-fns: one run of 0.12 s, against
# 0.52 s for the survey of 3x and the build of the selection).
FIRST_SURVEY_FACTOR = 2
# Reasons a module is left out (the manifest says which, per module; the metric counts them).
DOES_NOT_BUILD = "does_not_build"
IMPORTS_FAILING = "imports_failing"
OVER_BUDGET = "over_budget"
UNKNOWN = "unknown"


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


# ---------------------------------------------------------------- the operator's list


@dataclass(frozen=True)
class OperatorList:
    """``--fallback-modules FILE``: one module name per line; names before any
    ``[VERSION]`` header are for every version, names after it for that version only."""

    common: tuple[str, ...] = ()
    per_version: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def names(self, version: str) -> tuple[str, ...]:
        return self.per_version.get(version, ()) + self.common

    def digest(self, version: str) -> str:
        """Part of the fallback's identity: a changed list rebuilds the fallback."""
        names = self.names(version)
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16] if names else ""

    @classmethod
    def parse(cls, text: str, source: str = "the fallback modules file") -> OperatorList:
        common: list[str] = []
        per_version: dict[str, list[str]] = {}
        current = common
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                if line.startswith("[") and line.endswith("]"):
                    current = per_version.setdefault(validate_version(line[1:-1].strip()), [])
                else:
                    current.append(validate_module(line, max_chars=10_000))
            except BadRequest as exc:
                raise ConfigError(f"{source}, line {number}: {exc.message}") from None
        return cls(tuple(common), {v: tuple(n) for v, n in per_version.items()})

    @classmethod
    def load(cls, path: str) -> OperatorList:
        if not path:
            return cls()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read --fallback-modules {path!r}: {exc.strerror}") from None
        return cls.parse(text, f"--fallback-modules {path}")


# ---------------------------------------------------------------- ranking


def module_popularity(combos: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modules of the popular combinations, most requested first (a module's score is
    the summed count of the combinations it is in)."""
    score: collections.Counter[str] = collections.Counter()
    for combo in combos:
        for module in combo["modules"]:
            score[module] += int(combo["count"])
    return [m for m, _ in sorted(score.items(), key=lambda item: (-item[1], item[0]))]


def _rest_order(name: str, path: str) -> tuple[int, int, str]:
    """ES modules before CommonJS copies of them, then shallow paths first."""
    ext = os.path.splitext(path)[1]
    return (1 if ext in (".cjs", ".cts") else 0, name.count("/"), name)


def rank(
    candidates: Candidates,
    operator: Sequence[str],
    popular: Sequence[str],
    entry_points: Sequence[str],
) -> list[str]:
    """Every candidate name, most wanted first. A file's other names follow the first
    of its names that is ranked, so a page finds it under any of them."""
    by_path: dict[str, list[str]] = collections.defaultdict(list)
    for name, path in candidates.files.items():
        by_path[path].append(name)
    ranked: dict[str, None] = {}

    def add(name: str) -> None:
        path = candidates.files.get(name)
        if path is None or name in ranked:
            return
        ranked[name] = None
        for sibling in by_path[path]:
            ranked.setdefault(sibling, None)

    for name in operator:
        add(name)
    for name in popular:
        add(name)
    for path in entry_points:
        for name in by_path.get(path, ()):
            add(name)
    for name in sorted(candidates.files, key=lambda n: _rest_order(n, candidates.files[n])):
        add(name)
    return list(ranked)


def survey_prefix(ranked: Sequence[str], candidates: Candidates, source_bytes: int) -> int:
    """How many of the ranked names to survey: their files add up to ``source_bytes``."""
    seen: set[str] = set()
    total = 0
    for i, name in enumerate(ranked):
        path = candidates.files[name]
        if path not in seen:
            seen.add(path)
            total += candidates.sizes.get(path, 0)
            if total > source_bytes and i > 0:
                return i
    return len(ranked)


# ---------------------------------------------------------------- selection


@dataclass(frozen=True)
class Survey:
    """What a survey build found: the module graph and each file's share of the output."""

    resolved: dict[str, str]  # name -> the input esbuild resolved it to
    imports: dict[str, list[str]]  # input -> inputs it imports
    bytes_in_output: dict[str, int]  # input -> its minified bytes in the bundle
    base_bytes: int  # the bundle's own runtime (helpers, the wrapper)
    bytes_per_name: float  # the entry's registration cost of one name
    failing: dict[str, str]  # input that does not build -> why (one line)
    unresolved: dict[str, str]  # name esbuild could not resolve -> why
    names: tuple[str, ...] = ()  # what the survey registered
    output: Any = None  # its bundle (a BuildOutput), when it can serve as the fallback itself


@dataclass(frozen=True)
class Selection:
    names: list[str]
    estimated_bytes: int
    left_out: dict[str, str]  # name -> why (a reason label, then details)


def _closure(start: str, imports: Mapping[str, Sequence[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for dep in imports.get(stack.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


def select(ranked: Sequence[str], survey: Survey, max_bytes: int) -> Selection:
    """Take the ranked names in order while the estimated bundle stays within max_bytes."""
    chosen: list[str] = []
    inputs: set[str] = set()
    total = float(survey.base_bytes)
    left_out: dict[str, str] = {}
    for name in ranked:
        if name in survey.unresolved:
            left_out[name] = f"{DOES_NOT_BUILD}: {survey.unresolved[name]}"
            continue
        start = survey.resolved.get(name)
        if start is None:
            left_out[name] = f"{OVER_BUDGET}: not examined, the budget was full"
            continue
        if start in survey.failing:
            left_out[name] = f"{DOES_NOT_BUILD}: {survey.failing[start]}"
            continue
        closure = _closure(start, survey.imports)
        broken = sorted(closure & survey.failing.keys())
        if broken:
            left_out[name] = (
                f"{IMPORTS_FAILING}: imports {broken[0]}, which does not build: "
                f"{survey.failing[broken[0]]}"
            )
            continue
        cost = survey.bytes_per_name + sum(
            survey.bytes_in_output.get(i, 0) for i in closure - inputs
        )
        if total + cost > max_bytes:
            left_out[name] = f"{OVER_BUDGET}: would add about {round(cost)} bytes"
            continue
        chosen.append(name)
        inputs |= closure
        total += cost
    return Selection(names=sorted(chosen), estimated_bytes=round(total), left_out=left_out)


def reason_counts(left_out: Mapping[str, str]) -> dict[str, int]:
    return dict(collections.Counter(reason.split(":", 1)[0] for reason in left_out.values()))
