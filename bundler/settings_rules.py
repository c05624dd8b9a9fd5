"""What values of the settings make sense, alone and together: a service must refuse
to start on nonsense (a negative budget, a CIDR that is not one) with every problem
named at once, rather than misbehave under load."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bundler.clients import parse_networks

if TYPE_CHECKING:
    from bundler.settings import Settings

REGISTRY_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")  # fullmatch
HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")  # fullmatch
ESBUILD_TARGET = re.compile(r"[a-z]+[0-9.]*(,[a-z]+[0-9.]*)*")
# An origin as a browser sends it: scheme, host, optional port; no path.
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


# Each name's bound: at least 1, not negative, positive.
AT_LEAST_ONE = (
    "max_modules", "max_module_name_chars", "memory_cache_max_bytes", "disk_cache_max_bytes",
    "combos_top_k", "source_max_download_bytes", "source_keep_versions",
    "extract_max_members", "extract_max_file_bytes", "extract_max_total_bytes",
    "fallback_max_bytes", "build_batch_max", "write_min_bytes_per_s",
)  # fmt: skip
NOT_NEGATIVE = (
    "build_pool_size", "build_threads", "disk_cache_min_free_bytes",
    "default_version_max_age_s", "source_retries", "source_retry_backoff_s",
    "source_failure_ttl_s", "max_connections", "shed_lag_ms", "drain_s",
    "shutdown_timeout_s", "combos_save_interval_s", "asset_inline_max_bytes",
    "esbuild_memory_mib", "carry_sweep_top", "client_requests_per_s",
    "client_builds_per_s", "client_build_burst",
)  # fmt: skip
POSITIVE = (
    "build_timeout_s", "source_download_timeout_s", "header_timeout_s", "body_timeout_s",
    "keepalive_timeout_s", "write_timeout_s", "watchdog_stall_s", "prefetch_interval_s",
)  # fmt: skip
ON_OFF = ("access_log", "carry_over", "prefetch_new_versions")


def problems(settings: Settings) -> list[str]:
    s = settings
    out = [f"{name} must be at least 1" for name in AT_LEAST_ONE if getattr(s, name) < 1]
    out += [f"{name} must not be negative" for name in NOT_NEGATIVE if getattr(s, name) < 0]
    out += [f"{name} must be positive" for name in POSITIVE if getattr(s, name) <= 0]
    out += [
        f"{name} must be 'on' or 'off', got {getattr(s, name)!r}"
        for name in ON_OFF
        if getattr(s, name) not in ("on", "off")
    ]
    if not 0 < s.port < 65536:
        out.append(f"port must be 1-65535, got {s.port}")
    if not 0 <= s.fallback_max_age_s <= 30:
        out.append("fallback_max_age_s must be 0-30: a CDN must not pin a fallback")
    if s.fallback_budget_ms < -1:
        out.append("fallback_budget_ms must be -1 (never), 0 (at once) or positive")
    if s.build_queue_max < -1:
        out.append("build_queue_max must be -1 (unbounded), 0 (the pool size) or positive")
    if s.flight_release not in ("staggered", "all-at-once"):
        out.append("flight_release must be 'staggered' or 'all-at-once'")
    if not 0 <= s.build_niceness <= 19:
        out.append("build_niceness must be 0-19")
    if not REGISTRY_NAME.fullmatch(s.registry_name):
        out.append(f"registry_name must be a JavaScript identifier, got {s.registry_name!r}")
    for name in ("esbuild_target", "esm_target"):
        if not ESBUILD_TARGET.fullmatch(getattr(s, name)):
            out.append(f"{name} looks wrong: {getattr(s, name)!r}")
    if s.cors_origins not in ("", "*") and not all(
        ORIGIN.fullmatch(o.strip()) for o in s.cors_origins.split(",")
    ):
        out.append(
            "cors_origins is *, empty, or origins such as https://shop.example.com (scheme, "
            f"host and port only), comma-separated; got {s.cors_origins!r}"
        )
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        out.append(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")
    if s.log_format not in ("text", "json"):
        out.append("log_format must be 'text' or 'json'")
    if not HEADER_NAME.fullmatch(s.client_header):
        out.append(f"client_header must be a header name, got {s.client_header!r}")
    try:
        parse_networks(s.trusted_proxies)
    except ValueError as exc:
        out.append(f"trusted_proxies: {exc}")
    return out
