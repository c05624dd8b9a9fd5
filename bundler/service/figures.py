"""What /metrics and the status page show of the service, read from its parts
(bundler.metrics names the metrics)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bundler.fallback.ranking import reason_counts
from bundler.fallback.store import FallbackStore
from bundler.sources import version_sort_key

if TYPE_CHECKING:
    from bundler.service.core import BundleService


def fallback_module_counts(fallbacks: FallbackStore) -> dict[str, float]:
    counts: dict[str, float] = {}
    for fallback in fallbacks.all_loaded():
        counts[f"{fallback.version}|included"] = len(fallback.names)
        for reason, n in reason_counts(fallback.left_out).items():
            counts[f"{fallback.version}|{reason}"] = n
    return counts


def metric_values(service: BundleService) -> dict[str, float | dict[str, float]]:
    return {
        "bundler_requests": dict(service.requests),
        "bundler_requests_by_form": dict(service.forms_asked),
        "bundler_builds": dict(service.builder.results),
        "bundler_esbuild_runs": dict(service.builder.runs),
        "bundler_esbuild_starts": float(service.builder.starts),
        "bundler_source_pulls": dict(service.source.pull_results),
        "bundler_source_pull_seconds": service.source.pull_seconds,
        "bundler_source_pull_phase_seconds": dict(service.source.pull_phases),
        "bundler_build_queue_depth": service.builder.queued,
        "bundler_build_pool_busy": service.builder.busy,
        "bundler_build_pool_size": service.builder.pool_size,
        "bundler_fallbacks_loaded": len(service.fallbacks),
        "bundler_fallback_bytes": {
            f.version: len(f.bundle.code) for f in service.fallbacks.all_loaded()
        },
        "bundler_fallback_modules": fallback_module_counts(service.fallbacks),
        "bundler_fallback_ready_seconds": {
            f"{f.version}|{part}": seconds
            for f in service.fallbacks.all_loaded()
            for part, seconds in service.fallbacks.ready_seconds.get(f.version, {}).items()
        },
        "bundler_ready": float(service.ready),
        "bundler_data_dir_writable": float(service.health.problem is None),
        "bundler_shared_lease_waits": float(service.lease_waits),
        "bundler_draining": float(service.draining),
        "bundler_event_loop_lag_max_seconds": service.lag.max_s,
        "bundler_event_loop_lag_smoothed_seconds": service.lag.smoothed_s,
        **service.tiers.metric_values(),
        **service.fleet.metric_values(),
        **service.carrier.metric_values(),
        **service.limits.metric_values(),
    }


def version_figures(service: BundleService) -> list[dict[str, Any]]:
    """Each version a release involves (the default, those pulled, those with a fallback
    or carried bundles): pulled or not and how long it took, its fallback (ready when, how
    big, what it left out), its bundles carried over and rebuilt."""
    fallbacks = {f.version: f for f in service.fallbacks.all_loaded()}
    names = {service.default_version, *service.source.pulled, *fallbacks}
    names |= set(service.carrier.by_version)
    rows = []
    for version in sorted(names, key=version_sort_key, reverse=True):
        fallback = fallbacks.get(version)
        carried: Mapping[str, int] = service.carrier.by_version.get(version, {})
        rows.append(
            {
                "version": version,
                "default": version == service.default_version,
                "here": service.source.here(version),
                "pull_s": service.source.pulled.get(version),
                "fallback": None if fallback is None else fallback.summary(),
                "fallback_ready_s": dict(service.fallbacks.ready_seconds.get(version) or {}),
                "fallback_complete": fallback is not None
                and service.fallbacks.improving(version) is None,
                "carried": carried.get("carried", 0),
                "rebuilt": carried.get("rebuilt", 0),
            }
        )
    return rows
