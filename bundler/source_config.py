"""A source from its setting: a directory (one subdirectory per version), an http(s) URL
template of version tarballs, or ``npm:NAME``; a setting that cannot work is a one-line
ConfigError at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bundler import extract, npm
from bundler.download import DownloadPolicy, parse_checksum_setting
from bundler.errors import ConfigError
from bundler.npm_source import NpmSource
from bundler.settings import Settings
from bundler.sources import DirectorySource, SourceStore, TarballSource

NPM_PREFIX = "npm:"
NPM_CACHE_DIR = "npm-cache"  # under the data dir: npm's own cache of packuments and tarballs


def open_source(settings: Settings) -> SourceStore:
    spec = settings.source
    if spec.startswith(NPM_PREFIX):
        return _open_npm(settings, spec.removeprefix(NPM_PREFIX))
    if "://" not in spec:
        own = (Path(settings.data_dir), *filter(None, [settings.static_fallback_dir]))
        return DirectorySource(Path(spec), not_versions=own)
    if not spec.startswith(("http://", "https://")) or "{version}" not in spec:
        raise ConfigError(
            f"source URL {spec!r} must be http(s) and contain {{version}}, "
            "e.g. https://artifacts.example/pkg-{version}.tgz"
        )
    try:
        checksum = parse_checksum_setting(settings.source_checksum)
    except ValueError as exc:
        raise ConfigError(f"source_checksum: {exc}") from None
    return TarballSource(spec, **_pull_settings(settings, checksum))


def _pull_settings(settings: Settings, checksum: str | dict[str, str] = "none") -> dict[str, Any]:
    return {
        "data_dir": Path(settings.data_dir).resolve(),
        "policy": DownloadPolicy(
            max_bytes=settings.source_max_download_bytes,
            timeout_s=settings.source_download_timeout_s,
            retries=settings.source_retries,
            backoff_s=settings.source_retry_backoff_s,
            checksum=checksum,
        ),
        "limits": extract.ExtractLimits(
            max_members=settings.extract_max_members,
            max_file_bytes=settings.extract_max_file_bytes,
            max_total_bytes=settings.extract_max_total_bytes,
        ),
        "failure_ttl_s": settings.source_failure_ttl_s,
        "keep_versions": settings.source_keep_versions,
    }


def _open_npm(settings: Settings, package: str) -> NpmSource:
    if not npm.valid_package_name(package):
        raise ConfigError(
            f"source {settings.source!r}: {package!r} is not an npm package name "
            "(npm:NAME or npm:@scope/NAME)"
        )
    if settings.source_checksum != "none":
        raise ConfigError("source_checksum applies to tarball URLs; npm checks its own integrity")
    pull = _pull_settings(settings)
    client = npm.NpmClient(pull["data_dir"] / NPM_CACHE_DIR, settings.npm_registry)
    caps = npm.InstallCaps(settings.extract_max_members, settings.extract_max_total_bytes)
    return NpmSource(package, client, caps, **pull)
