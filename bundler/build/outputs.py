"""What one esbuild run gave back, turned into bundles: the service's post-processing.

esbuild answers with its output files and metafile in memory (``write: false``). Each
bundle is read from them: its CSS cut per file and added by the bundle itself, large
images and fonts moved out by hash (bundler.css), its source map made relative to the
version root, and every input that came from outside the version named, so that such
a bundle is refused.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler import css
from bundler.build.assets import AssetStore
from bundler.build.jobs import BuildJob
from bundler.build.marks import Marks, render, spots
from bundler.carry.record import make_record

# A build's layout in its scratch dir: entry I/entry.js comes back as I/bundle.js.
ENTRY_NAME = "entry.js"
OUTPUT_NAME = "bundle.js"
METAFILE_NAME = "meta.json"
SOURCE_MAP_COMMENT = re.compile(rb"//# sourceMappingURL=\S+\s*$")


class EsbuildResult:
    """What one build request gave: esbuild's report if it failed, else its outputs.
    The metafile is parsed where it is first used, in a worker thread: a survey's runs
    to megabytes, too long a parse for the event loop."""

    def __init__(self, report: str | None, metafile: str, files: dict[str, bytes]) -> None:
        self.report = report
        self.files = files
        self._metafile_json = metafile

    @functools.cached_property
    def metafile(self) -> dict[str, Any]:
        return dict(json.loads(self._metafile_json))


@dataclass(frozen=True)
class ReadOutput:
    code: bytes
    sourcemap: bytes | None
    outside: list[str]
    css_map: bytes | None = None
    marks: Marks = ()
    inputs: bytes = b""  # what it was built from (bundler.carry.record)


def read_output(
    result: EsbuildResult,
    outdir: Path,
    source_root: Path,
    job: BuildJob,
    assets: AssetStore,
    whole_run: bool = False,
    esbuild_version: str = "",
) -> ReadOutput:
    """The bundle esbuild made in ``outdir`` (its entry beside it), its map, and the
    inputs esbuild took from outside the source root.

    esbuild resolves bare imports by walking up parent directories; a version must
    not pick up whatever node_modules happens to sit above the data directory.
    ``whole_run``: every input of the run counts (it made this one bundle), not only
    those that ended up in this bundle.
    """
    meta = result.metafile
    outfile = outdir / OUTPUT_NAME
    entry = outdir / ENTRY_NAME
    if whole_run:
        inputs = dict(meta.get("inputs", {}))
    else:
        inputs = dict(meta["outputs"][relative(outfile, source_root)]["inputs"])
    css_file = outfile.with_name(css.CSS_NAME)
    css_pieces: list[bytes] = []
    css_edits: css.Edits = {}
    css_bytes = result.files.get(str(css_file))
    if css_bytes is not None:  # its modules import CSS: it travels inside the bundle
        css_output = meta.get("outputs", {}).get(relative(css_file, source_root), {})
        css_from = css_output.get("inputs", {})
        inputs.update(css_from)
        css_pieces, css_edits = css.move_out_css(
            css.pieces(css_bytes, css.css_inputs(css_from)),
            job.options.asset_inline_max_bytes,
            job.written_version,
            assets.put,
        )
        # What the CSS points at (inlined, so in no output's inputs) is checked like an import.
        for name in list(css_from):
            for record in meta.get("inputs", {}).get(name, {}).get("imports", []):
                if not record.get("external"):
                    inputs.setdefault(record.get("path", ""), {})
    entry_key = os.path.relpath(entry, source_root)
    outside = [
        # A package it imported by name; any other file outside is not named at all.
        "node_modules/" + name.rsplit("node_modules/", 1)[1]
        if "node_modules/" in name
        else "a file (an absolute path, a '..' beyond the root, or a symlink out)"
        for name in inputs
        if name != entry_key and (name.startswith("../") or os.path.isabs(name))
    ]
    code, js_edits = css.move_out_js(
        result.files[str(outfile)],
        job.options.asset_inline_max_bytes,
        job.written_version,
        assets.put,
    )
    map_bytes = css_map = None
    if css_pieces and job.map_url and job.with_map:
        raw = result.files[str(css_file) + ".map"]
        css_map = css.shift_map(relative_sourcemap(raw, outdir, source_root), css_edits)
    if css_pieces:  # after the last mapped line: the source map stays exact
        code = SOURCE_MAP_COMMENT.sub(b"", code).rstrip() + b"\n" + css.injector(css_pieces)
    if job.map_url:
        if job.with_map:
            raw = result.files[str(outfile) + ".map"]
            map_bytes = css.shift_map(relative_sourcemap(raw, outdir, source_root), js_edits)
        code = (
            SOURCE_MAP_COMMENT.sub(b"", code).rstrip()
            + f"\n//# sourceMappingURL={job.map_url}\n".encode()
        )
    if job.options.module:  # same length: the maps and the marks below stay true
        code = css.for_module(code)
    marks: Marks = ()
    record = b""
    if job.written_version != job.version:
        # The maps were made for the text with its marks: shifted where a mark's
        # replacement is shorter or longer (a minified bundle is one long line).
        if map_bytes is not None:
            edits = css.by_line(code, spots(code, job.version))
            map_bytes = css.shift_map(render(map_bytes, job.version)[0], edits)
        if css_map is not None:
            sheet = b"".join(css_pieces)
            edits = css.by_line(sheet, spots(sheet, job.version))
            css_map = css.shift_map(render(css_map, job.version)[0], edits)
        code, marks = render(code, job.version)
        if esbuild_version and not outside:
            record = make_record(meta, list(inputs), entry_key, job.registrations, esbuild_version)
    return ReadOutput(code, map_bytes, outside, css_map, marks, record)


def read_outputs(
    result: EsbuildResult,
    workdir: Path,
    jobs: Sequence[BuildJob],
    source_root: Path,
    assets: AssetStore,
    esbuild_version: str = "",
) -> list[ReadOutput]:
    """Every bundle of one build (the layout of Builder._request)."""
    return [
        read_output(
            result, workdir / str(i), source_root, job, assets, esbuild_version=esbuild_version
        )
        for i, job in enumerate(jobs)
    ]


def relative_sourcemap(raw: bytes, outdir: Path, source_root: Path) -> bytes:
    """Map sources as paths under the version root, and no machine path anywhere.

    esbuild writes sources relative to the map's directory (our scratch dir):
    "../../sources/1.2.0/src/a.js". A byte-level rewrite of that known prefix
    avoids parsing maps that run to hundreds of KB (their sourcesContent) in
    Python while the loop wants the GIL.
    """
    prefix = os.path.relpath(source_root, outdir) + "/"
    raw = raw.replace(b'"' + prefix.encode(), b'"')
    raw = raw.replace(b'"' + ENTRY_NAME.encode() + b'"', b'"<entry>"')
    # The generated entry's own text names modules by absolute path.
    return raw.replace(str(source_root).encode() + b"/", b"")


def relative(path: Path, root: Path) -> str:
    """``path`` as esbuild names it: relative to its working directory (the source root)."""
    return os.path.relpath(path, root)
