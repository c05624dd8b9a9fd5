"""``npm:NAME``: each version fetched by the npm client (``npm pack``), unpacked like a
tarball, and its production dependencies installed into its own node_modules (scripts
never run); the registry lists the versions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cachetools import TTLCache

from bundler import extract, npm
from bundler.flight import SingleFlight
from bundler.sources import TarballSource, version_sort_key

# How long the registry's version list is reused by /versions.
VERSIONS_TTL_S = 60.0


class NpmSource(TarballSource):
    """``npm:NAME``: each version fetched by the npm client (``npm pack``), unpacked like a
    tarball, and its production dependencies installed into its own node_modules."""

    def __init__(
        self, package: str, client: npm.NpmClient, caps: npm.InstallCaps, **kwargs: Any
    ) -> None:
        super().__init__(f"npm:{package}@{{version}}", **kwargs)
        self.package = package
        self.client = client
        self.caps = caps
        self._listed: TTLCache[str, list[str]] = TTLCache(maxsize=1, ttl=VERSIONS_TTL_S)
        self._listing: SingleFlight[str, list[str]] = SingleFlight("npm view")

    def describe(self) -> str:
        return f"npm package {self.package}"

    async def _fetch(self, version: str, workdir: Path) -> Path:
        return await self.client.pack(self.package, version, workdir, self.policy.timeout_s)

    def _dependencies(
        self, version: str, deadline: float
    ) -> Callable[[Path], Awaitable[None]] | None:
        async def install(root: Path) -> None:
            await self.client.install(root, self.caps, self._left(deadline), version)
            lock = root / "node_modules" / ".package-lock.json"  # what npm installed
            await asyncio.to_thread(extract.fold_into_digest, root, lock)

        return install

    async def versions(self) -> list[str]:
        """What the registry offers (asked at most every VERSIONS_TTL_S)."""
        listed = self._listed.get(self.package)
        if listed is None:
            listed = await self._listing.do(
                self.package, lambda: self.client.versions(self.package, self.policy.timeout_s)
            )
            self._listed[self.package] = listed
        return sorted(listed, key=version_sort_key)
