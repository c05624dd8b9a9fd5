"""Where each version's source comes from, behind one SourceStore interface.

- DirectorySource: a local directory with one subdirectory per version (the
  embedded example components).
- TarballSource: an http(s) URL template with ``{version}``; each version is
  pulled once (one download however many requests wait, via SingleFlight),
  extracted safely in a thread, installed atomically under the data dir, and
  old versions are removed when no build uses them.
- NpmSource (bundler.npm_source): a tarball source fetched by the npm client.

bundler.source_config makes the one a setting names. ``async with store.use(version) as root`` gives the version's source root and
keeps it on disk while the caller builds from it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import aiohttp
from cachetools import TTLCache

from bundler import extract
from bundler.digest import Digests
from bundler.download import DownloadPolicy, download
from bundler.errors import (
    DISK_ERRNOS,
    BundlerError,
    ConfigError,
    SourceUnavailable,
    VersionNotFound,
)
from bundler.flight import SingleFlight
from bundler.spec import validate_version

logger = logging.getLogger(__name__)

# Versions whose failed pull is remembered at once (each for source_failure_ttl_s).
MAX_REMEMBERED_FAILURES = 256
TARBALL_NAME = "download.tar"


def version_not_found(version: str) -> str:
    return f"version {version!r} does not exist in this bundle source: GET /versions lists them"


def version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Orders 1.10.0 after 1.9.0; a pre-release tag sorts after its digits."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.+-]", version))


class SourceStore(Protocol):
    remote: bool  # pulled over the network: the default version is fetched in the background
    pull_results: collections.Counter[str]
    pull_seconds: float  # spent on pulls that succeeded (download and unpack)
    pull_phases: collections.Counter[str]  # the same, by phase (download, extract, ...)
    pulled: dict[str, float]  # version -> seconds its last pull took (the status page)

    def use(self, version: str) -> AbstractAsyncContextManager[Path]: ...
    def here(self, version: str) -> bool: ...  # usable without a pull
    async def digest(self, version: str) -> str: ...
    def known_digest(self, version: str) -> str | None: ...
    def newest_version(self) -> str | None: ...
    def pin(self, version: str) -> None: ...
    def describe(self) -> str: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def fail_waiters(self, error: BaseException) -> int: ...
    async def versions(self) -> list[str]: ...


class DirectorySource:
    """A directory with one subdirectory per version.

    ``not_versions`` are directories that may sit inside it and are never versions: the
    service's own data dir and fallback dir (``--source .`` run from the source itself).
    """

    remote = False

    def __init__(self, root: Path, not_versions: tuple[Path, ...] = ()) -> None:
        self.pull_results: collections.Counter[str] = collections.Counter()  # never pulls
        self.pull_seconds = 0.0
        self.pull_phases: collections.Counter[str] = collections.Counter()
        self.pulled: dict[str, float] = {}  # version -> seconds its last pull took
        if not root.is_dir():
            raise ConfigError(f"source directory {str(root)!r} does not exist")
        self.root = root.resolve()
        self._not_versions = {p.resolve() for p in not_versions}
        self._digests = Digests(self.use)

    def _names(self) -> list[str]:
        return [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.resolve() not in self._not_versions
        ]

    def newest_version(self) -> str | None:
        return max(self._names(), key=version_sort_key, default=None)

    def here(self, version: str) -> bool:
        return (self.root / version).is_dir()

    @asynccontextmanager
    async def use(self, version: str) -> AsyncIterator[Path]:
        path = self.root / validate_version(version)
        if not path.is_dir() or path.resolve() in self._not_versions:
            raise VersionNotFound(version_not_found(version))
        yield path

    async def digest(self, version: str) -> str:
        return await self._digests.get(version)

    def known_digest(self, version: str) -> str | None:
        return self._digests.known(version)

    def describe(self) -> str:
        return f"directory {self.root}"

    async def versions(self) -> list[str]:
        return sorted(self._names(), key=version_sort_key)

    def pin(self, version: str) -> None:
        pass  # nothing is ever removed from a source directory

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self._digests.close()

    def fail_waiters(self, error: BaseException) -> int:
        return 0  # nothing is ever pulled


class TarballSource:
    remote = True

    def __init__(
        self,
        url_template: str,
        data_dir: Path,
        *,
        policy: DownloadPolicy,
        limits: extract.ExtractLimits,
        failure_ttl_s: float,
        keep_versions: int,
    ) -> None:
        self.url_template = url_template
        self.sources_dir = data_dir / "sources"
        self.policy = policy
        self.limits = limits
        self.keep_versions = keep_versions
        self.pinned: set[str] = set()  # never removed by housekeeping (the default version)
        self.flight: SingleFlight[str, Path] = SingleFlight("pull")
        self.failures: TTLCache[str, BundlerError] = TTLCache(
            maxsize=MAX_REMEMBERED_FAILURES, ttl=failure_ttl_s
        )
        self.in_use: collections.Counter[str] = collections.Counter()
        self.last_used: dict[str, float] = {}
        self.pull_results: collections.Counter[str] = collections.Counter()
        self.pull_seconds = 0.0
        self.pull_phases: collections.Counter[str] = collections.Counter()
        self.pulled: dict[str, float] = {}  # version -> seconds its last pull took
        self._session: aiohttp.ClientSession | None = None
        self._digests = Digests(self.use)

    @property
    def pulls(self) -> int:
        return self.pull_results["ok"]

    def newest_version(self) -> str | None:
        return None  # an artifact server cannot be listed: the default version must be set

    def describe(self) -> str:
        return f"tarballs from {self.url_template}"

    def pin(self, version: str) -> None:
        self.pinned.add(version)

    async def start(self) -> None:
        removed = await asyncio.to_thread(extract.clean_stale, self.sources_dir)
        if removed:
            logger.warning("removed unfinished pulls", extra={"entries": removed})
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        )

    def fail_waiters(self, error: BaseException) -> int:
        """Requests waiting for a pull are answered with ``error`` (the shutdown deadline)."""
        return self.flight.fail_waiters(error)

    async def close(self) -> None:
        await self.flight.close()
        await self._digests.close()
        if self._session is not None:
            await self._session.close()

    @asynccontextmanager
    async def use(self, version: str) -> AsyncIterator[Path]:
        root = await self.checkout(version)
        self.in_use[version] += 1
        try:
            yield root
        finally:
            self.in_use[version] -= 1

    async def digest(self, version: str) -> str:
        """The version's digest, recorded by its extraction (pulled first if need be)."""
        return await self._digests.get(version)

    def known_digest(self, version: str) -> str | None:
        return self._digests.known(version)

    async def checkout(self, version: str) -> Path:
        validate_version(version)
        self.last_used[version] = time.monotonic()
        root = extract.installed_root(self.sources_dir, version)
        if root is not None:
            return root
        failure = self.failures.get(version)
        if failure is not None:
            raise failure
        return await self.flight.do(version, lambda: self._pull(version))

    def _url(self, version: str) -> str:
        return self.url_template.replace("{version}", version)

    async def _fetch(self, version: str, workdir: Path) -> Path:
        """The version's tarball, in ``workdir``."""
        assert self._session is not None, "start() was not awaited"
        tarball = workdir / TARBALL_NAME
        await download(self._session, self._url(version), version, tarball, self.policy)
        return tarball

    def _dependencies(
        self, version: str, deadline: float
    ) -> Callable[[Path], Awaitable[None]] | None:
        return None  # a tarball is self-contained

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.1, deadline - asyncio.get_running_loop().time())

    async def versions(self) -> list[str]:
        """What can be served: an artifact server cannot be listed, so what is installed."""
        return sorted(self.installed(), key=version_sort_key)

    async def _pull(self, version: str) -> Path:
        url = self._url(version)
        started = time.perf_counter()
        work: extract.WorkDir | None = None
        phases: dict[str, float] = {}
        try:
            try:
                work = await asyncio.to_thread(extract.WorkDir, self.sources_dir, version)
                deadline = asyncio.get_running_loop().time() + self.policy.timeout_s
                tarball = await self._fetch(version, work.path)
                phases["download"] = time.perf_counter() - started
                root = await work.install_async(
                    tarball,
                    self.limits,
                    self._left(deadline),
                    self._dependencies(version, deadline),
                    phases,
                )
            except OSError as exc:
                if exc.errno not in DISK_ERRNOS:
                    raise
                # A full or read-only data dir: remembered like any failed pull.
                raise SourceUnavailable(
                    f"the service cannot write its data dir ({exc.strerror}); retry later"
                ) from None
        except BundlerError as exc:
            logger.warning(
                "pull failed", extra={"version": version, "url": url, "error": exc.message}
            )
            self.failures[version] = exc
            self.pull_results["not_found" if isinstance(exc, VersionNotFound) else "failed"] += 1
            raise
        finally:
            if work is not None:
                await asyncio.to_thread(work.remove)
        self.pull_results["ok"] += 1
        seconds = time.perf_counter() - started
        self.pull_seconds += seconds
        self.pulled[version] = seconds
        self.pull_phases.update(phases)
        logger.info(
            "pulled version",
            extra={
                "version": version,
                "duration_ms": round(seconds * 1000),
                **{f"{phase}_ms": round(s * 1000) for phase, s in phases.items()},
            },
        )
        await self.housekeep()
        return root

    def here(self, version: str) -> bool:
        return (self.sources_dir / version / extract.COMPLETE).exists()

    def installed(self) -> list[str]:
        if not self.sources_dir.is_dir():
            return []
        return [
            p.name
            for p in self.sources_dir.iterdir()
            if not p.name.startswith(".") and (p / extract.COMPLETE).exists()
        ]

    async def housekeep(self) -> list[str]:
        """Keep the most recently used versions; remove the rest unless a build uses them."""

        def recency(version: str) -> tuple[bool, float]:
            """Used since this process started first (most recent first), then by install time."""
            if version in self.last_used:
                return True, self.last_used[version]
            try:
                return False, (self.sources_dir / version / extract.COMPLETE).stat().st_mtime
            except FileNotFoundError:
                return False, float("-inf")

        versions = sorted(self.installed(), key=recency, reverse=True)
        removed = []
        for version in versions[self.keep_versions :]:
            if version in self.pinned or self.in_use[version] or version in self.flight:
                continue
            await asyncio.to_thread(extract.remove_version, self.sources_dir, version)
            self._digests.forget(version)
            self.last_used.pop(version, None)
            removed.append(version)
        if removed:
            logger.info("removed old versions", extra={"versions": removed})
        return removed
