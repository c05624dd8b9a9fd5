"""esbuild's error reports: made safe to answer with (no machine path, nothing from
outside a version), and read for what they say (a module that does not exist, a package
that is not installed)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from bundler.build.jobs import BuildJob
from bundler.build.outputs import ENTRY_NAME
from bundler.entry import names_for_specifier
from bundler.errors import BuildFailed, UnknownModule

logger = logging.getLogger(__name__)

UNRESOLVED = re.compile(r'Could not resolve "([^"]+)"')
# esbuild's report is returned to the client; this keeps a pathological one small.
MAX_ERROR_CHARS = 4000
# A location line of esbuild's report: "    path/to/file.js:12:3:".
LOCATION = re.compile(r"^\s+(\S[^\n]*?):\d+:\d+:$", re.MULTILINE)
MESSAGE_START = re.compile(r"^(?=[✘▲] \[)", re.MULTILINE)
OUTSIDE_MESSAGE = (
    "✘ [ERROR] a module of this version imports a file outside it (an absolute path, "
    "a '..' beyond its root, or a symlink out); only files inside the version are bundled"
)


def redact_outside(report: str) -> str:
    """A message located in a file outside the version is replaced whole: esbuild quotes
    the line it points at, and nothing outside a version's root may reach an answer."""
    messages = MESSAGE_START.split(report)
    kept = []
    for message in messages:
        paths = LOCATION.findall(message)
        if any(p.startswith(("../", "/")) or p == ".." for p in paths):
            if OUTSIDE_MESSAGE not in kept:
                kept.append(OUTSIDE_MESSAGE + "\n\n")
        else:
            kept.append(message)
    return "".join(kept)


def missing_packages(report: str) -> dict[str, str]:
    """{package specifier: the file importing it} for each bare import esbuild could not
    resolve in a (sanitized) report: a dependency that is not installed."""
    missing: dict[str, str] = {}
    for message in MESSAGE_START.split(report):
        match = UNRESOLVED.search(message)
        if match is None or match.group(1).startswith((".", "/")):
            continue
        location = LOCATION.search(message)
        missing.setdefault(match.group(1), location.group(1) if location else "a module")
    return missing


def sanitize(report: str, source_root: Path, workdir: Path) -> str:
    """esbuild's report with no machine paths: sources relative to the version root."""
    text = report
    for path, label in ((workdir, "<entry>"), (source_root, "")):
        for form in (str(path), os.path.relpath(path, source_root)):
            if form != ".":
                text = text.replace(form + "/", label + ("/" if label else ""))
                text = text.replace(form, label)
    text = text.replace("<entry>/" + ENTRY_NAME, "<entry>")
    text = redact_outside(text).strip()
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "\n[... report truncated]"
    return text


def failure(
    report: str, job: BuildJob, source_root: Path, workdir: Path
) -> BuildFailed | UnknownModule:
    """What a failed build's report means for its request: an unknown module (404), a
    dependency that is not installed, or esbuild's own words (422)."""
    unknown = sorted(
        {
            name
            for specifier in UNRESOLVED.findall(report)
            for name in names_for_specifier(specifier, job.registrations, source_root)
        }
    )
    if unknown:
        return UnknownModule(job.version, unknown)
    missing = missing_packages(sanitize(report, source_root, workdir))
    if missing:
        logger.warning("build failed", extra={"key": job.key, "bundle": job.label})
        return BuildFailed(
            f"version {job.version} cannot be built: "
            + "; ".join(f"{where} imports {spec!r}" for spec, where in missing.items())
            + f", which {'is' if len(missing) == 1 else 'are'} not installed with it. "
            "A package that a module imports must be one of the published package's "
            '"dependencies" (not a devDependency), so that it is installed with it'
        )
    message = sanitize(report, source_root, workdir)
    logger.warning("build failed", extra={"key": job.key, "bundle": job.label})
    return BuildFailed(f"esbuild could not build version {job.version}:\n{message}")
