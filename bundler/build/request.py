"""What esbuild is asked for a build: the request over its service protocol, and the
same build as a command line (what one would run by hand; the benchmark does)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundler import css
from bundler.build.jobs import BuildJob
from bundler.build.outputs import ENTRY_NAME, METAFILE_NAME, OUTPUT_NAME


def command(esbuild: str, entry: Path, outfile: Path, job: BuildJob) -> list[str]:
    return [
        esbuild,
        str(entry),
        "--bundle",
        f"--outfile={outfile}",
        f"--metafile={outfile.with_name(METAFILE_NAME)}",
        *flags(job),
        "--log-level=error",
    ]


def build_request(
    workdir: Path, count: int, job: BuildJob, source_root: Path, extra: Sequence[str]
) -> dict[str, Any]:
    """One build request for ``count`` bundles: entry ``I/entry.js`` comes back as
    ``I/bundle.js``, the layout of a single build, so a bundle and its map come out
    the same either way. Nothing is written: the outputs come back in the answer."""
    stem = OUTPUT_NAME.removesuffix(".js")
    return {
        "command": "build",
        "key": 0,  # the service gives each build in flight its own
        "entries": [[f"{i}/{stem}", str(workdir / str(i) / ENTRY_NAME)] for i in range(count)],
        "flags": [
            "--bundle",
            f"--outdir={workdir}",
            "--metafile",
            *flags(job),
            "--log-level=silent",  # the errors come back in the answer
            *extra,
        ],
        "write": False,
        "stdinContents": None,
        "stdinResolveDir": None,
        "absWorkingDir": str(source_root),  # reports name files relative to it
        # A name the package publishes (the entry imports it as is) resolves through
        # the version's link to itself (extract.link_self), as in an application.
        "nodePaths": [str(source_root / "node_modules")],
        "context": False,
    }


def flags(job: BuildJob) -> list[str]:
    out = [
        f"--format={job.options.format}",
        "--platform=browser",
        f"--target={job.options.target}",
        "--charset=utf8",
        "--color=false",
    ]
    out += css.loader_flags()
    if job.options.minify:
        out.append("--minify")
    if job.map_url and job.with_map:
        out.append("--sourcemap")
    return out
