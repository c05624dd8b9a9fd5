"""Images and fonts moved out of bundles' CSS and JavaScript, stored by content hash.

Nothing to do with esbuild: a build's output post-processing puts files here, and
GET /assets/<version>/<name> reads them (or finds one in a version's source by its hash,
on a replica that never built the bundle naming it).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from bundler import css
from bundler.errors import DISK_ERRNOS, DiskFault, NotFound
from bundler.fsutil import atomic_write
from bundler.sources import SourceStore
from bundler.spec import validate_version


class AssetStore:
    """Images and fonts moved out of bundles' CSS, by content hash: ``<data>/assets``.
    Written once (a name is its content), read by GET /assets/<version>/<name>."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, name: str, data: bytes) -> None:
        """In a build's thread; a disk that cannot take it is the service's fault."""
        path = self.directory / name
        if path.exists():
            return
        try:
            atomic_write(path, data)
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                raise DiskFault("assets", exc) from None
            raise

    def get(self, name: str) -> bytes | None:
        if not css.ASSET_NAME.fullmatch(name):
            return None
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def find(self, root: Path, name: str) -> bytes | None:
        """A replica that did not build the bundle: the version's file of that type and
        hash (then stored). Files outside the root (a symlink out) are never read."""
        if not css.ASSET_NAME.fullmatch(name):
            return None
        digest, ext = name.split(".")
        suffixes = (f".{ext}", ".jpeg") if ext == "jpg" else (f".{ext}",)
        real_root = root.resolve()
        for path in root.rglob("*"):
            if path.suffix.lower() not in suffixes or not path.is_file():
                continue
            if not path.resolve().is_relative_to(real_root):
                continue
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest()[:32] == digest:
                self.put(name, data)
                return data
        return None


async def find_asset(assets: AssetStore, source: SourceStore, version: str, name: str) -> bytes:
    """A moved-out image or font: stored when a bundle here was built, else found in the
    version's source by its hash (a replica that never built that bundle)."""
    validate_version(version)
    if not css.ASSET_NAME.fullmatch(name):
        raise NotFound(f"no asset {name!r}: asset names come from a bundle's CSS")
    data = await asyncio.to_thread(assets.get, name)
    if data is None:
        async with source.use(version) as root:
            data = await asyncio.to_thread(assets.find, root, name)
    if data is None:
        raise NotFound(f"version {version} has no asset {name!r}")
    return data
