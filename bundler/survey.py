"""The survey build: which candidate modules build, what they import, what each costs.

Real packages ship files that do not build on their own (a test helper importing
a file that is not published, an example using top-level await, a Node-only
script). One such file must not cost a version its whole fallback. esbuild stops
at errors and then writes no metafile, so the survey runs it again with every
file an error was reported in marked external (``--external:./path``, matched
after resolution): the build then goes through, and its metafile shows who
imports the failing files. Usually two esbuild runs, at most MAX_ROUNDS.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, SurveyRun
from bundler.build.reports import UNRESOLVED, sanitize
from bundler.errors import BuildFailed
from bundler.fallback.candidates import Candidates
from bundler.fallback.ranking import Survey
from bundler.resolve import self_link
from bundler.spec import BuildOptions

logger = logging.getLogger(__name__)

# Each round marks at least one more failing file external; past this, give up.
MAX_ROUNDS = 8
ERROR_START = "✘ [ERROR] "
LOCATION = re.compile(r"^    (\S.*?):(\d+):(\d+):$")
OUTSIDE = "a file outside the version"
MAX_REASON_CHARS = 300


def parse_errors(stderr: str) -> list[tuple[str | None, str]]:
    """(file the error is in, relative to the source root, or None; its one-line message)."""
    errors: list[tuple[str | None, str]] = []
    for block in stderr.split(ERROR_START)[1:]:
        lines = block.splitlines()
        location = None
        for line in lines[1:]:
            match = LOCATION.match(line)
            if match:
                location = os.path.normpath(match.group(1))
                break
            if line.startswith(ERROR_START.strip()):
                break
        errors.append((location, lines[0].strip() if lines else ""))
    return errors


def _label(path: str) -> str:
    return OUTSIDE if path.startswith("..") or os.path.isabs(path) else path


async def run_survey(
    builder: Builder,
    root: Path,
    version: str,
    names: Sequence[str],
    options: BuildOptions,
    candidates: Candidates,
    map_url: str | None = None,
) -> Survey:
    """``map_url``: make the bundle with its source map too, so that a survey whose
    every name builds and fits can be the fallback itself (a small package)."""
    failing: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    active = sorted(names)  # the fallback's own (canonical) order
    workdir_hint = builder.scratch_dir
    # A failing file is also reached through the package's link to itself (a name it
    # publishes, "vue" -> node_modules/vue/dist/...): esbuild matches an external path
    # before it follows the link, so both paths are left out.
    link = self_link(root)
    for _ in range(MAX_ROUNDS):
        if not active:
            break
        job = BuildJob.survey(version, active, options, map_url)
        externals = sorted(failing) + [f"{link}/{path}" for path in sorted(failing) if link]
        run = await builder.survey(job, root, externals)
        if run.ok:
            return _survey(run, root, active, failing, unresolved, candidates)
        progress = False
        for location, message in parse_errors(run.stderr):
            reason = sanitize(message, root, workdir_hint)[:MAX_REASON_CHARS]
            if location == run.entry_key:  # a candidate name esbuild cannot resolve
                for specifier in UNRESOLVED.findall(message):
                    name = specifier.removeprefix(f"{root}/")
                    if name in active:
                        active.remove(name)
                        unresolved[name] = "esbuild cannot resolve it"
                        progress = True
            elif location is not None and location not in failing:
                where = _label(location)
                failing[location] = f"{where}: {reason}" if where == OUTSIDE else reason
                progress = True
        if not progress:  # every error is in a file already left out, or in none
            raise BuildFailed(
                f"esbuild could not build version {version}, even with the files that fail "
                f"left out ({len(failing)}):\n" + sanitize(run.stderr, root, workdir_hint)
            )
    if active:
        raise BuildFailed(f"version {version}: too many files fail to build (gave up)")
    return Survey({}, {}, {}, 0, 0.0, failing, unresolved)


def _survey(
    run: SurveyRun,
    root: Path,
    names: list[str],
    failing: dict[str, str],
    unresolved: dict[str, str],
    candidates: Candidates,
) -> Survey:
    assert run.metafile is not None
    inputs = run.metafile.get("inputs", {})
    entry_records = inputs.get(run.entry_key, {}).get("imports", [])
    resolved: dict[str, str] = {}
    if len(entry_records) == len(names):  # one import statement per name, in order
        for name, record in zip(names, entry_records, strict=True):
            if record.get("external"):
                resolved[name] = candidates.files.get(name, name)
                failing.setdefault(resolved[name], "does not build")
            else:
                resolved[name] = record["path"]
    else:  # esbuild changed how it reports: no name can be vouched for
        logger.warning("survey: unexpected metafile; fallback left empty")
    imports: dict[str, list[str]] = {}
    for key, info in inputs.items():
        deps = []
        for record in info.get("imports", []):
            path = record.get("path", "")
            if path.startswith("<"):  # esbuild's own <runtime> helpers
                continue
            if not record.get("external"):
                deps.append(path)
                continue
            # esbuild writes an external path relative to the output directory.
            out_dir = os.path.join(root, run.outdir_key)
            targets = (
                os.path.relpath(os.path.normpath(os.path.join(out_dir, path)), root),
                os.path.normpath(os.path.join(os.path.dirname(key), path)),
            )
            target = next((t for t in targets if t in failing), None)
            if target is not None:
                deps.append(target)
            elif key != run.entry_key:
                failing.setdefault(key, f"imports {path}, which does not build")
        imports[key] = deps
    outputs = run.metafile.get("outputs", {})
    output: dict[str, Any] = next((v for k, v in outputs.items() if not k.endswith(".map")), {})
    sizes = {k: int(v.get("bytesInOutput", 0)) for k, v in output.get("inputs", {}).items()}
    entry_bytes = sizes.pop(run.entry_key, 0)
    base = max(0, int(output.get("bytes", 0)) - entry_bytes - sum(sizes.values()))
    return Survey(
        names=tuple(names),
        output=run.output,
        resolved=resolved,
        imports=imports,
        bytes_in_output=sizes,
        base_bytes=base,
        bytes_per_name=entry_bytes / max(1, len(names)),
        failing=failing,
        unresolved=unresolved,
    )
