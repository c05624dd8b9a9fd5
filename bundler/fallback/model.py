"""A fallback, the plan it is chosen by, and what a stored one must match to be used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bundler.bundle import BROTLI_QUALITY, Bundle
from bundler.fallback.ranking import DOES_NOT_BUILD, IMPORTS_FAILING, OperatorList, reason_counts
from bundler.spec import FORMAT_VERSION, BuildOptions

ETAG_PREFIX = "fb-"
# Bumped when what a fallback holds, or how it is chosen, changes: older ones are rebuilt.
PLAN_FORMAT = 2
NOT_BUILDING = (DOES_NOT_BUILD, IMPORTS_FAILING)


@dataclass(frozen=True)
class Fallback:
    version: str
    bundle: Bundle  # its sourcemap is the fallback's map
    names: frozenset[str]
    left_out: Mapping[str, str] = field(default_factory=dict)  # name -> why
    excluded: Mapping[str, int] = field(default_factory=dict)  # not candidates, by kind

    def covers(self, modules: tuple[str, ...]) -> bool:
        return all(m in self.names for m in modules)

    def not_built(self) -> list[str]:
        """The modules left out because they (or what they import) do not build."""
        return [name for name, why in self.left_out.items() if why.startswith(NOT_BUILDING)]

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bytes": len(self.bundle.code),
            "modules": len(self.names),
            "left_out_counts": reason_counts(self.left_out),
            "not_candidates": dict(self.excluded),
        }


@dataclass(frozen=True)
class Plan:
    """How a fallback is chosen: the budget, the operator's list, what pages asked for."""

    max_bytes: int
    operator: tuple[str, ...] = ()
    popular: tuple[str, ...] = ()
    operator_digest: str = ""
    # The fallback served before this one (another version's, whole): at a release, its
    # modules are the new version's quick first part (one esbuild run instead of a survey
    # and a build) where they still hold what pages ask for most; and the modules it left
    # out as not building are left out of the first survey (a run saved: rxjs ships
    # TypeScript sources that fail it).
    previous: tuple[str, ...] = ()
    failed_before: frozenset[str] = frozenset()

    @classmethod
    def make(
        cls,
        version: str,
        max_bytes: int,
        operator: OperatorList,
        popular: Sequence[str],
        previous: Fallback | None = None,
    ) -> Plan:
        return cls(
            max_bytes,
            operator.names(version),
            tuple(popular),
            operator.digest(version),
            tuple(sorted(previous.names)) if previous else (),
            frozenset(previous.not_built()) if previous else frozenset(),
        )


def identity(
    version: str, options: BuildOptions, source_sha256: str, max_bytes: int, operator_digest: str
) -> dict[str, Any]:
    """What a stored fallback must match to be used: otherwise it is rebuilt."""
    return {
        "format": FORMAT_VERSION,  # of the bundle wrapper
        "plan_format": PLAN_FORMAT,
        "version": version,
        "source_sha256": source_sha256,
        "target": options.target,
        "registry_name": options.registry_name,
        "minify": options.minify,
        "max_bytes": max_bytes,
        "fallback_modules": operator_digest,
    }


@dataclass(frozen=True)
class FallbackBuild:
    version: str
    code: bytes
    sourcemap: bytes
    names: list[str]
    left_out: dict[str, str]
    excluded: dict[str, int]
    max_bytes: int
    operator_digest: str
    source_sha256: str = ""

    def manifest(self, options: BuildOptions) -> dict[str, Any]:
        return {
            **identity(
                self.version, options, self.source_sha256, self.max_bytes, self.operator_digest
            ),
            "bytes": len(self.code),
            "names": sorted(self.names),
            "left_out_counts": reason_counts(self.left_out),
            "not_candidates": self.excluded,
            "left_out": dict(sorted(self.left_out.items())),
        }

    def fallback(self, brotli_quality: int = BROTLI_QUALITY) -> Fallback:
        """CPU work (compressing): call it off the event loop."""
        bundle = Bundle.create(
            f"fallback:{self.version}",
            self.code,
            self.sourcemap,
            etag_prefix=ETAG_PREFIX,
            brotli_quality=brotli_quality,
        )
        return Fallback(
            self.version, bundle, frozenset(self.names), dict(self.left_out), dict(self.excluded)
        )


def describe_fallback(summary: Mapping[str, Any]) -> str:
    """One line for an operator: size, modules, and what was left out and why."""
    left = ", ".join(f"{n} {reason}" for reason, n in sorted(summary["left_out_counts"].items()))
    return (
        f"fallback of {summary['version']}: {summary['bytes']} bytes, {summary['modules']} "
        f"module names; left out: {left or 'nothing'}"
    )
