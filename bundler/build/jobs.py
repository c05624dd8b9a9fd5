"""What a build is asked to do, and what it gives back: one place for every kind of job.

A tailored bundle (a page's modules), a version's fallback and a fallback's survey are
each one esbuild run over a generated entry; they differ in what they register, how
urgent they are and what is kept of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bundler.build.marks import QUERY_MARK, RAW_MARK, Marks
from bundler.entry import Registration
from bundler.slots import Priority
from bundler.spec import BuildOptions, BundleSpec


@dataclass(frozen=True)
class BuildJob:
    """One esbuild run: which names to register, from which files, how urgently."""

    version: str
    registrations: tuple[Registration, ...]
    options: BuildOptions
    key: str
    label: str  # for logs: the canonical query, or "fallback <version>"
    priority: Priority = Priority.TAILORED
    # Where the bundle's //# sourceMappingURL= points (relative); None: no source map.
    map_url: str | None = None
    mode: str = "tailored"  # or "fallback": recorded in the bundle for loaders
    # Make the source map in this run. A tailored bundle is built without it (a third
    # less esbuild work, a fifth of the memory) and its map on request, by a second run
    # whose code is byte-for-byte the same.
    with_map: bool = True

    @classmethod
    def tailored(
        cls,
        spec: BundleSpec,
        registrations: tuple[Registration, ...],
        priority: Priority = Priority.TAILORED,
        *,
        with_map: bool = False,
    ) -> BuildJob:
        """``registrations``: the spec's names with the files they resolve to (bundler.resolve)."""
        return cls(
            version=spec.version,
            registrations=registrations,
            options=spec.options,
            key=spec.key,
            label=spec.query,
            priority=priority,
            map_url=f"{spec.path}.map?" + spec.query_for(QUERY_MARK),
            with_map=with_map,
        )

    @property
    def written_version(self) -> str:
        """The version as the build writes it: a tailored bundle's is a mark, replaced
        once its output is read (bundler.build.marks), a fallback's is itself."""
        return RAW_MARK if self.mode == "tailored" else self.version

    @classmethod
    def fallback(
        cls, version: str, registrations: Sequence[Registration], options: BuildOptions
    ) -> BuildJob:
        """A version's fallback: every name it holds, ahead of every tailored build."""
        return cls(
            version=version,
            registrations=tuple(registrations),
            options=options,
            key=f"fallback:{version}",
            label=f"fallback {version}",
            priority=Priority.FALLBACK,
            map_url=fallback_map_url(version),
            mode="fallback",
        )

    @classmethod
    def survey(
        cls, version: str, names: Sequence[str], options: BuildOptions, map_url: str | None
    ) -> BuildJob:
        """A fallback's survey (bundler.survey): each candidate name registered as itself."""
        return cls(
            version=version,
            registrations=tuple((n, n) for n in names),
            options=options,
            key=f"fallback-survey:{version}",
            label=f"fallback survey {version}",
            priority=Priority.FALLBACK,
            mode="fallback",
            map_url=map_url,
        )


def fallback_map_url(version: str) -> str:
    """Where a fallback's //# sourceMappingURL= points."""
    return f"fallback.js.map?v={version}"


@dataclass(frozen=True)
class BuildOutput:
    code: bytes
    sourcemap: bytes | None
    duration_s: float
    css_map: bytes | None = None  # the source map of the CSS it carries (/bundle.css.map)
    marks: Marks = ()  # where a tailored bundle's code names its version
    inputs: bytes = b""  # what it was built from (bundler.carry.record)


@dataclass(frozen=True)
class SurveyRun:
    """One survey build (bundler.survey): no output kept, only what esbuild reported."""

    ok: bool
    metafile: dict[str, Any] | None
    entry_key: str  # the entry file as the metafile names it
    stderr: str
    # The output directory as the metafile names files: external imports are written
    # relative to it.
    outdir_key: str = "."
    # The bundle itself, when the job asked for a source map and nothing came from outside.
    output: BuildOutput | None = None
