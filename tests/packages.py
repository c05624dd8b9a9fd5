"""Real npm package tarballs for tests, fetched once with `npm pack` and cached."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"


def npm_tarball(name: str, version: str) -> bytes:
    """The package's published tarball (as `npm pack` fetches it from the registry)."""
    path = CACHE / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not path.exists():
        npm = shutil.which("npm")
        assert npm, "npm is required to fetch real packages for the tests"
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", str(CACHE), "--silent"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    return path.read_bytes()
