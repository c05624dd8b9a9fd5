"""What goes into a version's fallback: the candidates' order, and a byte budget.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler.errors import BadRequest, ConfigError
from bundler.fallback.candidates import Candidates
from bundler.spec import validate_module, validate_version

logger = logging.getLogger(__name__)

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
