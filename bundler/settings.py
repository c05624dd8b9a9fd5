"""Every knob of the service, in one frozen dataclass.

Each field carries its help text; the CLI flags (``--build-timeout-s``) and the
environment variables (``BUNDLER_BUILD_TIMEOUT_S``) are derived from the field
name, so an operator can set anything from a Kubernetes manifest and the three
never drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundler import settings_rules
from bundler.checkout import bundled_fallback_dir, default_esbuild, default_source
from bundler.cpus import available_cpus
from bundler.errors import ConfigError

ENV_PREFIX = "BUNDLER_"


def _opt(help_text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help_text}, **kwargs)


@dataclass(frozen=True)
class Settings:
    host: str = _opt("Address to listen on.", default="127.0.0.1")
    port: int = _opt("TCP port to listen on.", default=8080)
    source: str = _opt(
        "Where version sources come from: a directory with one subdirectory per version, "
        "an http(s) URL template of version tarballs containing {version}, or npm:NAME "
        "(an npm package, installed with its dependencies by the npm client).",
        default_factory=default_source,
    )
    npm_registry: str = _opt(
        "npm sources: the registry URL (default: the npm client's own configuration, "
        ".npmrc and its auth included).",
        default="",
    )
    source_checksum: str = _opt(
        "Tarball sources: 'none', 'published' ({url}.sha256 must match) or "
        "VERSION:SHA256,... pins (unpinned versions are refused).",
        default="none",
    )
    source_download_timeout_s: float = _opt(
        "Deadline of one version pull (download or npm install), retries included.",
        default=60.0,
    )
    source_max_download_bytes: int = _opt("Largest tarball accepted.", default=100 * 1024 * 1024)
    source_retries: int = _opt("Retries of a download on connection errors and 5xx.", default=3)
    source_retry_backoff_s: float = _opt(
        "Base of the jittered exponential backoff between retries.", default=0.5
    )
    source_failure_ttl_s: float = _opt(
        "How long a failed pull is remembered before the next request retries it.", default=5.0
    )
    source_keep_versions: int = _opt(
        "Pulled versions kept on disk (most recently used; the default version always).",
        default=5,
    )
    extract_max_members: int = _opt("Most entries a source tarball may have.", default=20_000)
    extract_max_file_bytes: int = _opt(
        "Largest single file in a source tarball.", default=20 * 1024 * 1024
    )
    extract_max_total_bytes: int = _opt(
        "Most bytes a source tarball may unpack to.", default=200 * 1024 * 1024
    )
    default_version: str = _opt(
        "Version served when a request has no v= (default: the newest version in the source).",
        default="",
    )
    data_dir: str = _opt("Directory for build scratch space and caches.", default="data")
    redis_url: str = _opt(
        "Shared tier of a fleet of replicas: redis://host:6379/0 (unset: none, each replica "
        "on its own tiers).",
        default="",
    )
    redis_timeout_ms: float = _opt(
        "Each Redis operation gives up after this long; the replica carries on without it.",
        default=50.0,
    )
    redis_ttl_s: float = _opt("How long a bundle is kept in Redis.", default=7 * 24 * 3600.0)
    redis_key_prefix: str = _opt(
        "Prefix of every Redis key (deployments sharing one Redis keep apart).",
        default="bundler:",
    )
    esbuild: str = _opt(
        "Path of the esbuild binary (default: the one `npm ci` installed, else PATH).",
        default_factory=default_esbuild,
    )
    esbuild_target: str = _opt("esbuild --target for every bundle.", default="es2018")
    esm_target: str = _opt(
        "esbuild --target for the module form (/bundle.mjs): its exports are named as the "
        "modules (string export names), which es2018 cannot write; the default is the "
        "oldest browsers that run them.",
        default="chrome90,firefox87,safari14.1,ios14.5",
    )
    cors_origins: str = _opt(
        "Origins whose pages may read bundles, maps and assets (Access-Control-Allow-"
        "Origin; module scripts and fonts are fetched in CORS mode): * (any page: public "
        "bundles), a comma-separated list of origins, or empty (same origin only).",
        default="*",
    )
    registry_name: str = _opt(
        "Global object under which bundles register their modules.", default="__bundlerModules"
    )
    asset_inline_max_bytes: int = _opt(
        "Images and fonts a component's CSS or JavaScript points at are inlined as data: URLs up to this "
        "size; larger ones are served at /assets/<version>/<hash>.<ext> (immutable), named "
        "relative to the bundle.",
        default=8192,
    )
    max_modules: int = _opt("Most modules one request may name.", default=50)
    max_module_name_chars: int = _opt("Longest module name accepted.", default=200)
    build_pool_size: int = _opt(
        "Concurrent builds (default: the CPUs this process may use).", default=0
    )
    build_threads: int = _opt(
        "CPUs per build: esbuild's GOMAXPROCS is pool size x this (default: CPUs / pool "
        "size, at least 1).",
        default=0,
    )
    build_timeout_s: float = _opt(
        "Deadline of one build; past it, its esbuild is killed.", default=20.0
    )
    esbuild_memory_mib: int = _opt(
        "Heap at which each long-lived esbuild collects its garbage (Go's GOMEMLIMIT, with "
        "GOGC off); 0: Go's default collector, slower builds, less memory.",
        default=256,
    )
    build_batch_max: int = _opt(
        "Most queued builds of one version that share one esbuild run (1: never batch).",
        default=16,
    )
    build_niceness: int = _opt(
        "Niceness increment for esbuild (as nice -n), so the server wins.", default=10
    )
    build_failure_ttl_s: float = _opt(
        "How long a failed build (422) is remembered instead of re-running esbuild.", default=30.0
    )
    memory_cache_max_bytes: int = _opt(
        "Bytes of bundles (plain + brotli) kept in memory.", default=256 * 1024 * 1024
    )
    disk_cache_max_bytes: int = _opt(
        "Bytes of bundles kept on disk under the data dir (survives restarts).",
        default=1024 * 1024 * 1024,
    )
    disk_cache_min_free_bytes: int = _opt(
        "Free space the disk tier leaves on its volume (it evicts, then skips writes, "
        "rather than fill it).",
        default=256 * 1024 * 1024,
    )
    combos_top_k: int = _opt(
        "Distinct module lists the popularity sketch tracks (memory stays bounded).", default=1024
    )
    combos_save_interval_s: float = _opt("How often the popularity is saved.", default=60.0)
    carry_over: str = _opt(
        "Answer a version's bundle with one built for another version when its inputs "
        "and their resolution did not change (no build): 'on' or 'off'.",
        default="on",
    )
    prefetch_new_versions: str = _opt(
        "Pull a version newer than the default as soon as the source lists it, and carry "
        "its popular bundles over before pages ask: 'on' or 'off'.",
        default="off",
    )
    prefetch_interval_s: float = _opt("How often --prefetch-new-versions looks.", default=60.0)
    carry_sweep_top: int = _opt(
        "Most requested combinations carried over to a new version before asked for.",
        default=500,
    )
    warm_token: str = _opt(
        "If set, POST /warm, /status and /status.json need 'X-Warm-Token: <this>' (or, "
        "for a browser, this as the Basic password).",
        default="",
    )
    default_version_max_age_s: int = _opt(
        "Cache-Control max-age when the request did not pin v=.", default=60
    )
    fallback_dir: str = _opt(
        "Prebuilt static fallbacks, one folder per version (bundler build-fallback --out DIR), "
        "read only; one is used only for the exact source it was built from, others are "
        "built on first use into the data dir (default: static_fallback/ of the checkout for "
        "the bundled examples, none for any other source).",
        default="",
    )
    fallback_max_bytes: int = _opt(
        "Size bound of a version's fallback (minified bytes): the most wanted modules that fit "
        "(the --fallback-modules list, then the most requested, then the package's entry "
        "points, then the rest); the least wanted are left out first.",
        default=256 * 1024,
    )
    fallback_modules: str = _opt(
        "File of modules every fallback holds first (one name per line; names after a "
        "[VERSION] line are for that version only).",
        default="",
    )
    fallback_budget_ms: int = _opt(
        "How long a cache miss waits for its tailored build before it gets the fallback; "
        "0: the fallback at once; -1: never the fallback, always wait.",
        default=150,
    )
    fallback_max_age_s: int = _opt(
        "Cache-Control and CDN-Cache-Control max-age of a fallback response (0-30).", default=30
    )
    build_queue_max: int = _opt(
        "Builds that may wait for a pool slot; past it a miss gets the fallback and its build "
        "is deferred to warm-up priority (default: pool size x batch max, what the pool "
        "takes in one round; -1: unbounded).",
        default=0,
    )
    shed_lag_ms: float = _opt(
        "Smoothed event-loop lag above which misses get the fallback without a build "
        "(0: never shed on lag).",
        default=250.0,
    )
    drain_s: float = _opt(
        "After SIGTERM: seconds of serving with /readyz at 503 before the listener closes.",
        default=5.0,
    )
    shutdown_timeout_s: float = _opt(
        "After the listener closes: how long in-flight requests may take to finish; those "
        "still waiting then get a 503.",
        default=30.0,
    )
    flight_release: str = _opt(
        "How waiters of a shared pull or build are woken: 'staggered' (one per loop "
        "iteration) or 'all-at-once' (the naive way; for benchmarks only).",
        default="staggered",
    )
    watchdog_stall_s: float = _opt(
        "A loop stuck this long gets every thread's stack dumped to stderr.", default=1.0
    )
    header_timeout_s: float = _opt(
        "A request's line and headers must arrive within this from its first byte, else "
        "the connection is closed (408): slowloris.",
        default=10.0,
    )
    body_timeout_s: float = _opt(
        "A request body (POST /warm) must arrive within this, else 408 and the "
        "connection is closed.",
        default=10.0,
    )
    keepalive_timeout_s: float = _opt(
        "An idle keep-alive connection (or a new one that sends nothing) is closed after "
        "this; keep it longer than the idle timeout of the load balancer in front.",
        default=75.0,
    )
    write_timeout_s: float = _opt(
        "A response must be taken by the client within this plus its size at "
        "--write-min-bytes-per-s, else the connection is reset.",
        default=15.0,
    )
    write_min_bytes_per_s: int = _opt(
        "The slowest reading rate a response's deadline allows (see --write-timeout-s).",
        default=8192,
    )
    max_connections: int = _opt(
        "Connections at once; past it the oldest with no request in progress is closed "
        "(a probe always gets in), else the new one gets a 503 (0: the open-files limit "
        "less a reserve).",
        default=0,
    )
    trusted_proxies: str = _opt(
        "CIDR,...: proxies whose --client-header names the client (none by default: the "
        "connection's address is the client; never read from anyone else).",
        default="",
    )
    client_header: str = _opt(
        "Where a trusted proxy names the client: x-forwarded-for, forwarded (RFC 7239), or "
        "a CDN's own header (cf-connecting-ip, true-client-ip, fastly-client-ip).",
        default="x-forwarded-for",
    )
    client_requests_per_s: float = _opt(
        "Requests a second one client may make (twice as many in a burst); past it a 429 "
        "(0: no limit).",
        default=100.0,
    )
    client_builds_per_s: float = _opt(
        "Cold builds a second one client may start; past it its misses get the fallback, "
        "or a 429 where it does not cover them (0: no limit).",
        default=2.0,
    )
    client_build_burst: float = _opt("Cold builds one client may start at once.", default=20.0)
    log_format: str = _opt("Log lines as 'text' or 'json'.", default="text")
    log_level: str = _opt("Logging level.", default="INFO")
    access_log: str = _opt(
        "One log line per request (method, path, status, mode, bytes, duration): 'on' or 'off'.",
        default="on",
    )

    def __post_init__(self) -> None:
        problems = settings_rules.problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def pool_size(self) -> int:
        return self.build_pool_size or available_cpus()

    @property
    def static_fallback_dir(self) -> Path | None:
        if self.fallback_dir:
            return Path(self.fallback_dir)
        return bundled_fallback_dir(self.source)

    @property
    def queue_max(self) -> int | None:
        """Builds allowed to wait for a slot; None when unbounded."""
        if self.build_queue_max == -1:
            return None
        return self.build_queue_max or self.pool_size * self.build_batch_max

    @property
    def threads_per_build(self) -> int:
        return self.build_threads or max(1, available_cpus() // self.pool_size)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = convert(f, raw, ENV_PREFIX + f.name.upper())
        values.update(overrides)
        return cls(**values)


_NUMBER_TYPES: dict[str, type[int] | type[float]] = {"int": int, "float": float}


def convert(f: dataclasses.Field[Any], raw: str, label: str) -> Any:
    kind = _NUMBER_TYPES.get(str(f.type))
    if kind is None:
        return raw
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(
            f"{label} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None
