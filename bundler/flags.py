"""Settings as command-line flags: one flag per field, under its section's heading, with
its default and its BUNDLER_* variable; each command besides serve takes only the
settings it builds with."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from bundler.settings import ENV_PREFIX, Settings, convert

# What each command besides serve takes (serve takes everything). They build as the
# service does, so their bundles and fallbacks are the ones it looks for: the source, the
# data dir, esbuild's options and the fallback's plan.
BUILD_SETTINGS = frozenset(
    {
        "source", "npm_registry", "source_checksum", "source_download_timeout_s",
        "source_max_download_bytes", "source_retries", "source_retry_backoff_s",
        "extract_max_members", "extract_max_file_bytes", "extract_max_total_bytes",
        "data_dir", "esbuild", "esbuild_target", "esm_target", "registry_name",
        "asset_inline_max_bytes", "build_timeout_s", "build_threads", "esbuild_memory_mib", "fallback_dir",
        "fallback_max_bytes", "fallback_modules", "combos_top_k", "log_format",
    }
)  # fmt: skip
WARM_SETTINGS = BUILD_SETTINGS | {
    "warm_token", "max_modules", "max_module_name_chars", "build_pool_size",
    "build_batch_max", "disk_cache_max_bytes", "disk_cache_min_free_bytes",
}  # fmt: skip


# --help lists the settings under these headings, in this order (every field in one).
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("listening", ("host", "port", "warm_token", "drain_s", "shutdown_timeout_s")),
    ("connections", (
        "header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "write_timeout_s",
        "write_min_bytes_per_s", "max_connections",
    )),
    ("source", (
        "source", "default_version", "npm_registry", "source_checksum",
        "source_download_timeout_s", "source_max_download_bytes", "source_retries",
        "source_retry_backoff_s", "source_failure_ttl_s", "source_keep_versions",
        "extract_max_members", "extract_max_file_bytes", "extract_max_total_bytes",
    )),
    ("requests", (
        "max_modules", "max_module_name_chars", "default_version_max_age_s",
        "fallback_budget_ms", "fallback_max_age_s", "cors_origins",
    )),
    ("builds", (
        "esbuild", "esbuild_target", "esm_target", "registry_name", "asset_inline_max_bytes",
        "build_pool_size", "build_threads", "build_timeout_s", "esbuild_memory_mib",
        "build_batch_max", "build_niceness", "build_failure_ttl_s", "build_queue_max",
        "shed_lag_ms", "flight_release", "watchdog_stall_s",
    )),
    ("fallback", ("fallback_dir", "fallback_max_bytes", "fallback_modules")),
    ("caches", (
        "data_dir", "memory_cache_max_bytes", "disk_cache_max_bytes",
        "disk_cache_min_free_bytes", "combos_top_k", "combos_save_interval_s",
        "carry_over", "carry_sweep_top", "prefetch_new_versions", "prefetch_interval_s",
    )),
    ("clients", (
        "trusted_proxies", "client_header", "client_requests_per_s", "client_builds_per_s",
        "client_build_burst",
    )),
    ("fleet (Redis)", ("redis_url", "redis_timeout_ms", "redis_ttl_s", "redis_key_prefix")),
    ("logs", ("log_format", "log_level", "access_log")),
)  # fmt: skip


def _default_text(f: dataclasses.Field[Any]) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return repr(value) if value == "" else str(value)


def add_arguments(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """One flag per field (``only`` those named), with its default and its environment
    variable, under its section's heading; the value given is checked in
    settings_from_args."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for title, names in SECTIONS:
        shown = [fields[name] for name in names if only is None or name in only]
        if not shown:
            continue
        group = parser.add_argument_group(f"settings: {title}")
        for f in shown:
            env = ENV_PREFIX + f.name.upper()
            explained = "(default:" in f.metadata["help"]  # its help says it better
            default = "" if explained else f"default: {_default_text(f)}; "
            group.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                default=None,
                metavar=f.name.split("_")[-1].upper(),
                help=f"{f.metadata['help']} [{default}env {env}]",
            )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    overrides = {}
    for f in dataclasses.fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is not None:
            overrides[f.name] = convert(f, raw, "--" + f.name.replace("_", "-"))
    return Settings.from_env(environ, **overrides)
