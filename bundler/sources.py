"""Where each version's source comes from: a local directory per version.

``SourceStore.checkout(version)`` gives a directory holding that version's
modules; esbuild runs with it as its working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from bundler.errors import ConfigError, VersionNotFound
from bundler.spec import validate_version


def version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders 1.10.0 after 1.9.0; a pre-release tag sorts after its digits."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


class DirectorySource:
    """A directory with one subdirectory per version (the embedded example components)."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise ConfigError(f"source directory {str(root)!r} does not exist")
        self.root = root.resolve()

    def versions(self) -> list[str]:
        names = [p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(names, key=version_sort_key)

    async def checkout(self, version: str) -> Path:
        path = self.root / validate_version(version)
        if not path.is_dir():
            raise VersionNotFound(f"version {version!r} does not exist in this bundle source")
        return path

    def describe(self) -> str:
        return f"directory {self.root}"


def open_source(spec: str) -> DirectorySource:
    if "://" in spec:
        raise ConfigError(
            f"unsupported source {spec!r}: give a directory with one folder per version"
        )
    return DirectorySource(Path(spec))
