"""Static fallback bundles: every module of a version, registered like a tailored bundle.

While a tailored bundle is being built (or when the pool is saturated), a page
gets its version's fallback instead: bigger, but it registers every module
under every name a page may ask for, so the page works the same.

On disk, one directory per version (``static_fallback/<version>/`` shipped with
the service, or ``<data>/fallback/<version>/`` for ones built at run time):

    bundle.js      the bundle; its sourceMappingURL points at /fallback.js.map?v=<version>
    bundle.js.map  sources relative to the version root
    manifest.json  the names it registers and the build options it was made with
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache, TTLCache

from bundler.builder import Builder, BuildJob
from bundler.cache import BROTLI_QUALITY_MAX, Bundle
from bundler.entry import Registration
from bundler.errors import BadRequest, BuildFailed, BundlerError, UnknownModule
from bundler.flight import SingleFlight
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import FORMAT_VERSION, BuildOptions, validate_module

logger = logging.getLogger(__name__)

BUNDLE = "bundle.js"
SOURCE_MAP = "bundle.js.map"
MANIFEST = "manifest.json"
# esbuild's default resolve order: the first existing file wins for an extensionless name.
RESOLVE_EXTENSIONS = (".tsx", ".ts", ".jsx", ".js")
OTHER_EXTENSIONS = (".mjs", ".cjs", ".mts", ".cts")
ETAG_PREFIX = "fb-"
# How long a version whose fallback failed to build is left without one before retrying.
FAILURE_TTL_S = 60.0


@dataclass(frozen=True)
class Fallback:
    version: str
    bundle: Bundle  # its sourcemap is the fallback's map
    names: frozenset[str]

    def covers(self, modules: tuple[str, ...]) -> bool:
        return all(m in self.names for m in modules)


def list_registrations(root: Path) -> list[Registration]:
    """Every module of a version under every name esbuild would resolve to it.

    ``components/hero.js`` is registered as ``components/hero.js`` and
    ``components/hero``; ``components/banner/index.js`` also as
    ``components/banner``. Where two files claim one name, esbuild's own
    precedence decides (a file before a directory's index, .ts before .js).
    """
    claims: dict[str, tuple[int, str]] = {}

    def claim(name: str, rank: int, path: str) -> None:
        try:
            validate_module(name, max_chars=10_000)
        except BadRequest:
            return  # a name no request could use
        if name not in claims or rank < claims[name][0]:
            claims[name] = (rank, path)

    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "node_modules")
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        for filename in filenames:
            stem, ext = os.path.splitext(filename)
            if filename.startswith(".") or ext not in RESOLVE_EXTENSIONS + OTHER_EXTENSIONS:
                continue
            path = f"{rel_dir}/{filename}" if rel_dir else filename
            claim(path, 0, path)
            if ext in RESOLVE_EXTENSIONS:
                order = RESOLVE_EXTENSIONS.index(ext)
                claim(path[: -len(ext)], 1 + order, path)
                if stem == "index" and rel_dir:
                    claim(rel_dir, 10 + order, path)
    return sorted((name, path) for name, (_, path) in claims.items())


def fallback_job(
    version: str, registrations: list[Registration], options: BuildOptions
) -> BuildJob:
    return BuildJob(
        version=version,
        registrations=tuple(registrations),
        options=options,
        key=f"fallback:{version}",
        label=f"fallback {version}",
        priority=Priority.FALLBACK,
        map_url=map_url(version),
        mode="fallback",
    )


def map_url(version: str) -> str:
    return f"fallback.js.map?v={version}"


def source_digest(root: Path) -> str:
    """SHA-256 over every file of a version's source (paths and contents).

    A fallback is only used with the exact source it was built from: a prebuilt
    static_fallback/1.0.0 must never stand in for another source's 1.0.0.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def manifest(
    version: str, options: BuildOptions, names: list[str], source_sha256: str
) -> dict[str, object]:
    return {
        "format": FORMAT_VERSION,  # of the bundle wrapper: a stale one is rebuilt
        "version": version,
        "source_sha256": source_sha256,
        "target": options.target,
        "registry_name": options.registry_name,
        "minify": options.minify,
        "names": sorted(names),
    }


@dataclass(frozen=True)
class FallbackBuild:
    code: bytes
    sourcemap: bytes
    names: list[str]
    source_sha256: str


def write_fallback(
    directory: Path, version: str, options: BuildOptions, build: FallbackBuild
) -> None:
    """Write the three files into ``directory`` (replaced whole, by one rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    (staging / BUNDLE).write_bytes(build.code)
    (staging / SOURCE_MAP).write_bytes(build.sourcemap)
    meta = manifest(version, options, build.names, build.source_sha256)
    (staging / MANIFEST).write_text(json.dumps(meta, indent=1) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(staging, directory)


def read_fallback(
    directory: Path, version: str, options: BuildOptions, source_sha256: str
) -> Fallback | None:
    """The fallback in ``directory``, if it was built from this source with these options."""
    try:
        meta = json.loads((directory / MANIFEST).read_text())
        names = meta["names"]
        if meta != manifest(version, options, names, source_sha256):
            logger.warning(
                "fallback built from another source or with other options; ignored",
                extra={"dir": str(directory)},
            )
            return None
        code = (directory / BUNDLE).read_bytes()
        sourcemap = (directory / SOURCE_MAP).read_bytes()
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    bundle = Bundle.create(
        f"fallback:{version}",
        code,
        sourcemap,
        etag_prefix=ETAG_PREFIX,
        brotli_quality=BROTLI_QUALITY_MAX,
    )
    return Fallback(version=version, bundle=bundle, names=frozenset(names))


async def build_fallback(
    builder: Builder, root: Path, version: str, options: BuildOptions
) -> FallbackBuild:
    """Build the fallback of the version whose source is at ``root`` (held in use)."""
    registrations = await asyncio.to_thread(list_registrations, root)
    if not registrations:
        raise BuildFailed(f"version {version} has no JavaScript modules")
    output = await builder.build(fallback_job(version, registrations, options), root)
    assert output.sourcemap is not None
    return FallbackBuild(
        code=output.code,
        sourcemap=output.sourcemap,
        names=[name for name, _ in registrations],
        source_sha256=await asyncio.to_thread(source_digest, root),
    )


class FallbackStore:
    """Loads (or builds, ahead of tailored builds) one fallback per version, once."""

    def __init__(
        self,
        static_dir: Path | None,
        data_dir: Path,
        builder: Builder,
        source: SourceStore,
        options: BuildOptions,
        max_versions: int,
    ) -> None:
        self.static_dir = static_dir
        self.built_dir = data_dir / "fallback"
        self.builder = builder
        self.source = source
        self.options = options
        self._loaded: LRUCache[str, Fallback] = LRUCache(maxsize=max_versions)
        self._failures: TTLCache[str, BundlerError] = TTLCache(maxsize=64, ttl=FAILURE_TTL_S)
        self.flight: SingleFlight[str, Fallback] = SingleFlight("fallback")
        self.builds = 0

    def loaded(self, version: str) -> Fallback | None:
        return self._loaded.get(version)

    def __len__(self) -> int:
        return len(self._loaded)

    async def get(self, version: str) -> Fallback | None:
        """The version's fallback; None when it cannot be built (the request then waits
        for its tailored build). VersionNotFound and pull errors propagate."""
        fallback = self._loaded.get(version)
        if fallback is not None:
            return fallback
        if version in self._failures:
            return None
        try:
            return await self.flight.do(version, lambda: self._load_or_build(version))
        except (BuildFailed, UnknownModule) as exc:
            self._failures[version] = exc
            logger.error(
                "no fallback for this version", extra={"version": version, "error": exc.message}
            )
            return None

    async def _load_or_build(self, version: str) -> Fallback:
        async with self.source.use(version) as root:
            digest = await asyncio.to_thread(source_digest, root)
            for directory in (self.static_dir, self.built_dir):
                if directory is None:
                    continue
                fallback = await asyncio.to_thread(
                    read_fallback, directory / version, version, self.options, digest
                )
                if fallback is not None:
                    self._loaded[version] = fallback
                    return fallback
            build = await build_fallback(self.builder, root, version, self.options)
        self.builds += 1
        target = self.built_dir / version
        await asyncio.to_thread(write_fallback, target, version, self.options, build)
        fallback = await asyncio.to_thread(
            read_fallback, target, version, self.options, build.source_sha256
        )
        assert fallback is not None
        self._loaded[version] = fallback
        logger.info(
            "fallback ready", extra={"version": version, "bytes": len(fallback.bundle.code)}
        )
        return fallback
