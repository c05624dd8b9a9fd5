"""Fallbacks at rest: one directory per version on disk, one value in the shared tier.

On disk (``static_fallback/<version>/`` shipped with the service, read only, or
``<data>/fallback/<version>/`` for ones built at run time):

    bundle.js      the bundle; its sourceMappingURL points at /fallback.js.map?v=<version>
    bundle.js.map  sources relative to the version root
    manifest.json  what it registers, what it left out and why, and what it was built from

A stored fallback is used only if its manifest matches the source's digest and the
service's options and plan (model.identity); in the shared tier each part is checked
against its length and SHA-256 too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bundler.fallback.model import FallbackBuild, Plan, identity
from bundler.spec import BuildOptions

logger = logging.getLogger(__name__)

BUNDLE = "bundle.js"
SOURCE_MAP = "bundle.js.map"
MANIFEST = "manifest.json"
# Under the data dir: the fallbacks built at run time (or by build-fallback / warm).
BUILT_FALLBACKS = "fallback"


def write_fallback(directory: Path, options: BuildOptions, build: FallbackBuild) -> None:
    """Write the three files into ``directory`` (replaced whole, by one rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{build.version}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    (staging / BUNDLE).write_bytes(build.code)
    (staging / SOURCE_MAP).write_bytes(build.sourcemap)
    (staging / MANIFEST).write_text(json.dumps(build.manifest(options), indent=1) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(staging, directory)


SHARED_MAGIC = b"bundler-fallback-1\n"


def encode_shared(build: FallbackBuild, options: BuildOptions) -> bytes:
    header = {
        "manifest": build.manifest(options),
        "code": [len(build.code), hashlib.sha256(build.code).hexdigest()],
        "sourcemap": [len(build.sourcemap), hashlib.sha256(build.sourcemap).hexdigest()],
    }
    return SHARED_MAGIC + json.dumps(header).encode() + b"\n" + build.code + build.sourcemap


def decode_shared(raw: bytes, wanted: dict[str, Any], plan: Plan) -> FallbackBuild | None:
    """The fallback in a shared value, if whole (every part's length and SHA-256) and built
    from this source the same way; None otherwise."""
    try:
        if not raw.startswith(SHARED_MAGIC):
            return None
        end = raw.index(b"\n", len(SHARED_MAGIC))
        header = json.loads(raw[len(SHARED_MAGIC) : end])
        meta = header["manifest"]
        (code_len, code_sha), (map_len, map_sha) = header["code"], header["sourcemap"]
        code = raw[end + 1 : end + 1 + code_len]
        sourcemap = raw[end + 1 + code_len :]
        if len(code) != code_len or len(sourcemap) != map_len:
            return None
        if hashlib.sha256(code).hexdigest() != code_sha:
            return None
        if hashlib.sha256(sourcemap).hexdigest() != map_sha:
            return None
        if {k: meta.get(k) for k in wanted} != wanted:
            return None
        return FallbackBuild(
            version=wanted["version"],
            code=code,
            sourcemap=sourcemap,
            names=list(meta["names"]),
            left_out=dict(meta.get("left_out", {})),
            excluded=dict(meta.get("not_candidates", {})),
            max_bytes=plan.max_bytes,
            operator_digest=plan.operator_digest,
            source_sha256=wanted["source_sha256"],
        )
    except (ValueError, KeyError, TypeError):
        return None


def read_fallback(
    directory: Path,
    version: str,
    options: BuildOptions,
    source_sha256: str,
    plan: Plan,
) -> FallbackBuild | None:
    """The fallback in ``directory``, if it was built from this source the same way."""
    try:
        meta = json.loads((directory / MANIFEST).read_text())
        wanted = identity(version, options, source_sha256, plan.max_bytes, plan.operator_digest)
        if {k: meta.get(k) for k in wanted} != wanted:
            logger.warning(
                "stored fallback built from another source or with other options; rebuilt",
                extra={"version": version, "dir": directory.name},
            )
            return None
        return FallbackBuild(
            version=version,
            code=(directory / BUNDLE).read_bytes(),
            sourcemap=(directory / SOURCE_MAP).read_bytes(),
            names=list(meta["names"]),
            left_out=dict(meta.get("left_out", {})),
            excluded=dict(meta.get("not_candidates", {})),
            max_bytes=plan.max_bytes,
            operator_digest=plan.operator_digest,
            source_sha256=source_sha256,
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
