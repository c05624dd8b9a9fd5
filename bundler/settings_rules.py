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


def problems(self: Settings) -> list[str]:
    out = []
    if not 0 < self.port < 65536:
        out.append(f"port must be 1-65535, got {self.port}")
    for name in (
        "max_modules",
        "max_module_name_chars",
        "memory_cache_max_bytes",
        "disk_cache_max_bytes",
        "combos_top_k",
        "source_max_download_bytes",
        "source_keep_versions",
        "extract_max_members",
        "extract_max_file_bytes",
        "extract_max_total_bytes",
        "fallback_max_bytes",
        "build_batch_max",
        "write_min_bytes_per_s",
    ):
        if getattr(self, name) < 1:
            out.append(f"{name} must be at least 1")
    for name in (
        "build_pool_size",
        "build_threads",
        "disk_cache_min_free_bytes",
        "default_version_max_age_s",
        "source_retries",
        "source_retry_backoff_s",
        "source_failure_ttl_s",
        "max_connections",
    ):
        if getattr(self, name) < 0:
            out.append(f"{name} must not be negative")
    for name in (
        "build_timeout_s",
        "source_download_timeout_s",
        "header_timeout_s",
        "body_timeout_s",
        "keepalive_timeout_s",
        "write_timeout_s",
    ):
        if getattr(self, name) <= 0:
            out.append(f"{name} must be positive")
    if not 0 <= self.fallback_max_age_s <= 30:
        out.append("fallback_max_age_s must be 0-30: a CDN must not pin a fallback")
    if self.fallback_budget_ms < -1:
        out.append("fallback_budget_ms must be -1 (never), 0 (at once) or positive")
    if self.build_queue_max < -1:
        out.append("build_queue_max must be -1 (unbounded), 0 (the pool size) or positive")
    for name in (
        "shed_lag_ms",
        "drain_s",
        "shutdown_timeout_s",
        "combos_save_interval_s",
        "asset_inline_max_bytes",
        "esbuild_memory_mib",
    ):
        if getattr(self, name) < 0:
            out.append(f"{name} must not be negative")
    if self.watchdog_stall_s <= 0:
        out.append("watchdog_stall_s must be positive")
    if self.flight_release not in ("staggered", "all-at-once"):
        out.append("flight_release must be 'staggered' or 'all-at-once'")
    if not 0 <= self.build_niceness <= 19:
        out.append("build_niceness must be 0-19")
    if not REGISTRY_NAME.fullmatch(self.registry_name):
        out.append(f"registry_name must be a JavaScript identifier, got {self.registry_name!r}")
    if not ESBUILD_TARGET.fullmatch(self.esbuild_target):
        out.append(f"esbuild_target looks wrong: {self.esbuild_target!r}")
    if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        out.append(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
    if self.log_format not in ("text", "json"):
        out.append("log_format must be 'text' or 'json'")
    if self.prefetch_interval_s <= 0:
        out.append("prefetch_interval_s must be positive")
    if self.carry_sweep_top < 0:
        out.append("carry_sweep_top must be 0 or more")
    for name in ("access_log", "carry_over", "prefetch_new_versions"):
        if getattr(self, name) not in ("on", "off"):
            out.append(f"{name} must be 'on' or 'off', got {getattr(self, name)!r}")
    try:
        parse_networks(self.trusted_proxies)
    except ValueError as exc:
        out.append(f"trusted_proxies: {exc}")
    if not HEADER_NAME.fullmatch(self.client_header):
        out.append(f"client_header must be a header name, got {self.client_header!r}")
    for name in ("client_requests_per_s", "client_builds_per_s", "client_build_burst"):
        if getattr(self, name) < 0:
            out.append(f"{name} must not be negative")
    return out
