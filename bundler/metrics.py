"""Prometheus metrics, the event-loop lag monitor and the stuck-loop watchdog.

Counters that the service already keeps (requests by mode, builds, pulls,
cache use) are read at scrape time by a custom collector, so no inner module
imports prometheus_client. Lag is measured by a drift timer: a task that asks
to sleep ``interval`` and records how late it woke.
"""

from __future__ import annotations

import asyncio
import collections
import faulthandler
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BUILD_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The max gauge covers this many recent samples (60 s at the default interval).
LAG_WINDOW_SAMPLES = 600
# Weight of the newest sample in the smoothed lag that load shedding reads.
LAG_EWMA_ALPHA = 0.2


class LagMonitor:
    """Drift timer: every ``interval_s`` it records how late the loop woke it."""

    def __init__(self, registry: CollectorRegistry, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(
            "bundler_event_loop_lag_seconds",
            "How late the event loop ran a timer that should have fired on time.",
            buckets=LAG_BUCKETS_S,
            registry=registry,
        )
        self.smoothed_s = 0.0
        self.last_tick = time.monotonic()
        self._window: collections.deque[float] = collections.deque(maxlen=LAG_WINDOW_SAMPLES)
        self._task: asyncio.Task[None] | None = None

    @property
    def max_s(self) -> float:
        return max(self._window, default=0.0)

    def record(self, lag_s: float) -> None:
        self.histogram.observe(lag_s)
        self._window.append(lag_s)
        self.smoothed_s += LAG_EWMA_ALPHA * (lag_s - self.smoothed_s)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.last_tick = time.monotonic()
            self.record(max(0.0, loop.time() - expected))

    def start(self) -> None:
        self.last_tick = time.monotonic()
        self._task = asyncio.create_task(self._run(), name="lag-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Watchdog:
    """A thread that dumps every stack (faulthandler) when the loop is stuck too long.

    It cannot unstick anything; it tells the operator what was running.
    """

    def __init__(self, monitor: LagMonitor, stall_s: float = 1.0) -> None:
        self.monitor = monitor
        self.stall_s = stall_s
        self.dumps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-watchdog", daemon=True)

    def _run(self) -> None:
        reported_tick = None
        while not self._stop.wait(self.stall_s / 4):
            tick = self.monitor.last_tick
            stalled_s = time.monotonic() - tick
            if stalled_s > self.stall_s and tick != reported_tick:
                reported_tick = tick
                self.dumps += 1
                logger.error(
                    "event loop stuck; dumping all stacks", extra={"stalled_s": round(stalled_s, 3)}
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


# name -> (kind, help, label name for dict values)
SERVICE_METRICS: dict[str, tuple[str, str, str]] = {
    "bundler_requests": ("counter", "Bundle requests by how they were answered.", "mode"),
    "bundler_requests_by_form": (
        "counter",
        "Bundle requests answered, by form: iife (/bundle.js, /bundle.css), esm (/bundle.mjs).",
        "form",
    ),
    "bundler_limited": (
        "counter",
        "Answers a client's limits changed (bundler.limits): a 429 past its request rate "
        "(requests), the fallback or a 429 past its build budget (builds).",
        "reason",
    ),
    "bundler_clients_limited": ("gauge", "Clients limited in the last 10-15 s.", ""),
    "bundler_cache_lookups": (
        "counter",
        "Cache lookups by result (memory_hit, disk_hit, miss).",
        "result",
    ),
    "bundler_builds": ("counter", "Bundles built, by result.", "result"),
    "bundler_esbuild_runs": (
        "counter",
        "Builds asked of esbuild: single (one bundle), batch (several), survey.",
        "kind",
    ),
    "bundler_esbuild_starts": (
        "counter",
        "Long-lived esbuild processes started (one per priority; again after an idle "
        "spell, a crash or a deadline).",
        "",
    ),
    "bundler_source_pulls": ("counter", "Version source pulls by result.", "result"),
    "bundler_source_pull_seconds": (
        "counter",
        "Time spent on pulls that succeeded (download and unpack).",
        "",
    ),
    "bundler_source_pull_phase_seconds": (
        "counter",
        "The same, by phase: download, extract (unpack and write the files), dependencies "
        "(an npm source's install), publish.",
        "phase",
    ),
    "bundler_build_queue_depth": ("gauge", "Builds waiting for a pool slot.", ""),
    "bundler_build_pool_busy": ("gauge", "Builds in flight on esbuild.", ""),
    "bundler_build_pool_size": ("gauge", "Concurrent builds allowed.", ""),
    "bundler_cache_entries": ("gauge", "Bundles in the cache, by tier.", "tier"),
    "bundler_cache_bytes": ("gauge", "Bytes in the cache, by tier.", "tier"),
    "bundler_cache_max_bytes": ("gauge", "Each tier's bound in bytes (its setting).", "tier"),
    "bundler_cache_corrupt_entries": ("counter", "Disk entries that failed their checksum.", ""),
    "bundler_disk_writes_skipped": (
        "counter",
        "Built bundles not written to the disk tier: 8 MiB of them already waited for the "
        "writer (builds outpacing the disk).",
        "",
    ),
    "bundler_fallbacks_loaded": ("gauge", "Versions whose static fallback is loaded.", ""),
    "bundler_fallback_bytes": ("gauge", "Size of each loaded fallback (minified).", "version"),
    "bundler_fallback_ready_seconds": (
        "gauge",
        "From a loaded fallback's first need (pull included) until its first part, then "
        "all of it, could be served.",
        "version,part",
    ),
    "bundler_fallback_modules": (
        "gauge",
        "Module names of each loaded fallback: included, or left out and why "
        "(does_not_build, imports_failing, over_budget, unknown).",
        "version,state",
    ),
    "bundler_ready": ("gauge", "1 when /readyz answers 200.", ""),
    "bundler_data_dir_writable": (
        "gauge",
        "0 while a file cannot be written under the data dir (checked at start, then every "
        "5 s until it can); the pod still serves.",
        "",
    ),
    "bundler_disk_writes_failing": (
        "gauge",
        "1 while the disk tier's writes fail (full or read-only data dir).",
        "",
    ),
    "bundler_draining": ("gauge", "1 after SIGTERM, while draining.", ""),
    "bundler_connections_open": ("gauge", "Client connections open now.", ""),
    "bundler_connections_cut": (
        "counter",
        "Connections the service closed before the client did, by why: header_timeout "
        "(headers too slow), write_timeout (answer not read), evicted (idle, to make room "
        "past --max-connections), refused (no room).",
        "reason",
    ),
    "bundler_shared_up": (
        "gauge",
        "1 while the shared tier (Redis) answers; 0 when it does not, or is not configured.",
        "",
    ),
    "bundler_shared_state": (
        "gauge",
        "1 for the state this replica sees Redis in: up, deciding (timeouts in a row, a PING "
        "tells hung from busy) or down (left alone a second, then asked again).",
        "state",
    ),
    "bundler_shared_lookups": (
        "counter",
        "Shared tier (Redis) lookups by result (hit, miss, corrupt, error).",
        "result",
    ),
    "bundler_carryover": (
        "counter",
        "Bundles of a version looked for among other versions' bundles: carried (no build), "
        "or rebuilt and why (changed: an input's bytes; resolution: what an import resolves "
        "to may differ; unmodelled: an import or a tsconfig.json the decision does not "
        "model; entry: a requested name resolves elsewhere; esbuild: another esbuild; "
        "unrecorded: built before records, or what it depends on cannot be told).",
        "result,reason",
    ),
    "bundler_shared_lease_waits": (
        "counter",
        "Times a build waited for another replica's lease on the same bundle.",
        "",
    ),
    "bundler_event_loop_lag_max_seconds": ("gauge", "Largest loop lag in the last minute.", ""),
    "bundler_event_loop_lag_smoothed_seconds": ("gauge", "Smoothed loop lag (load shedding).", ""),
}


class ServiceCollector(Collector):
    def __init__(self, source: Callable[[], dict[str, float | dict[str, float]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        values = self._source()
        for name, (kind, help_text, label) in SERVICE_METRICS.items():
            value = values.get(name)
            if value is None:
                continue
            family: CounterMetricFamily | GaugeMetricFamily
            labels = label.split(",") if label else None
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=labels)
            else:
                family = GaugeMetricFamily(name, help_text, labels=labels)
            if isinstance(value, dict):
                for label_value, v in sorted(value.items()):
                    # Several labels: the key is their values joined by "|".
                    family.add_metric(label_value.split("|"), v)
            else:
                family.add_metric([], value)
            yield family


# Bundle answers: a warm hit takes about a millisecond, a cold build tens to hundreds.
ANSWER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


def answer_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "bundler_answer_seconds",
        "From a page's bundle request (/bundle.js, /bundle.mjs, /bundle.css) to its answer "
        "(200 or 304), its time to first byte as the service sees it.",
        buckets=ANSWER_BUCKETS_S,
        registry=registry,
    )


def build_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "bundler_build_duration_seconds",
        "Wall time of one esbuild run.",
        ["kind"],
        buckets=BUILD_BUCKETS_S,
        registry=registry,
    )
