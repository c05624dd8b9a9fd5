"""What the status page and ``bundler status`` show: the last few minutes of a release.

An operator watching a release wants to see the rates over the last minutes: are pages
getting tailored bundles, how long do they wait, is the build queue draining. /metrics
holds only totals. Every SAMPLE_S this board reads the same figures /metrics shows
(``BundleService.metric_values``, one source for both). It keeps KEEP samples and turns
consecutive ones into rates. A bundle request's time to its answer is observed here as
well, so each sample has the TTFB p50/p99 of its own interval (exact, over at most
MAX_TIMES requests; with more, a uniform sample of them).

``status()`` is the whole picture as JSON (/status.json): now, the series, the totals as
/metrics has them at the same moment, and each version's release figures.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

SAMPLE_S = 2.0
KEEP = 150  # five minutes
MAX_TIMES = 4096
# How pages were answered, as the page's chart names them (bundler_requests_total's modes).
ANSWERS = ("hit", "built", "carried", "fallback", "shed", "limited", "error")

# "Now" is the mean of the last few samples: steadier than one, still current.
NOW_SAMPLES = 5

Figures = dict[str, float | dict[str, float]]


def total(figures: Figures, name: str) -> float:
    value = figures.get(name, 0.0)
    return sum(value.values()) if isinstance(value, dict) else float(value)


def part(figures: Figures, name: str, label: str) -> float:
    value = figures.get(name)
    return float(value.get(label, 0.0)) if isinstance(value, dict) else 0.0


def recent(samples: list[dict[str, Any]], sample_s: float) -> dict[str, Any] | None:
    """The mean of ``samples``, field by field (a field none of them has stays None)."""
    if not samples:
        return None

    def mean(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.fmean(present) if present else None

    out: dict[str, Any] = {"at": samples[-1]["at"], "seconds": len(samples) * sample_s}
    out["answers"] = {a: mean([s["answers"][a] for s in samples]) for a in ANSWERS}
    for key in samples[-1]:
        if key not in ("at", "answers"):
            out[key] = mean([s[key] for s in samples])
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class StatusBoard:
    def __init__(
        self,
        figures: Callable[[], Figures],
        versions: Callable[[], list[dict[str, Any]]],
        sample_s: float = SAMPLE_S,
    ) -> None:
        self._figures = figures
        self._versions = versions
        self.sample_s = sample_s
        self.samples: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self._times: list[float] = []
        self._seen = 0  # requests observed in this interval (kept or not)
        self._last: tuple[float, Figures] | None = None
        self._task: asyncio.Task[None] | None = None

    def observe(self, seconds: float) -> None:
        """A bundle request answered in ``seconds``. Past MAX_TIMES in one interval, a
        uniform sample of them is kept (reservoir sampling): bounded memory, unbiased
        percentiles."""
        self._seen += 1
        if len(self._times) < MAX_TIMES:
            self._times.append(seconds)
        else:
            slot = random.randrange(self._seen)
            if slot < MAX_TIMES:
                self._times[slot] = seconds

    def sample(self, now: float | None = None) -> None:
        """One sample: the rates since the previous one, the gauges now."""
        now = time.monotonic() if now is None else now
        figures = self._figures()
        times, self._times, self._seen = self._times, [], 0
        if self._last is not None:
            then, before = self._last
            span = max(now - then, 1e-6)

            def rate(name: str, label: str | None = None) -> float:
                if label is None:
                    return max(0.0, total(figures, name) - total(before, name)) / span
                return max(0.0, part(figures, name, label) - part(before, name, label)) / span

            answers = {a: rate("bundler_requests", a) for a in ANSWERS}
            answered = sum(v for k, v in answers.items() if k != "error")
            tailored = answers["hit"] + answers["built"] + answers["carried"]
            self.samples.append(
                {
                    "at": time.time(),
                    "answers": answers,
                    "tailored_share": tailored / answered if answered else None,
                    "ttfb_p50_ms": percentile(times, 0.5) * 1000 if times else None,
                    "ttfb_p99_ms": percentile(times, 0.99) * 1000 if times else None,
                    "queue": total(figures, "bundler_build_queue_depth"),
                    "busy": total(figures, "bundler_build_pool_busy"),
                    "esbuild_runs": rate("bundler_esbuild_runs"),
                    "lag_ms": total(figures, "bundler_event_loop_lag_smoothed_seconds") * 1000,
                    "memory_bytes": part(figures, "bundler_cache_bytes", "memory"),
                    "disk_bytes": part(figures, "bundler_cache_bytes", "disk"),
                }
            )
        self._last = (now, figures)

    def status(self) -> dict[str, Any]:
        """The page's data: the latest sample, the series, /metrics' totals now, versions."""
        figures = self._figures()
        series = list(self.samples)
        shares = [s["tailored_share"] for s in series if s["tailored_share"] is not None]
        return {
            "sample_s": self.sample_s,
            "now": recent(series[-NOW_SAMPLES:], self.sample_s),
            "window": {
                "seconds": len(series) * self.sample_s,
                "tailored_share": statistics.fmean(shares) if shares else None,
            },
            "series": series,
            "ready": bool(total(figures, "bundler_ready")),
            "draining": bool(total(figures, "bundler_draining")),
            "pool_size": total(figures, "bundler_build_pool_size"),
            "bounds": {
                "memory_bytes": part(figures, "bundler_cache_max_bytes", "memory"),
                "disk_bytes": part(figures, "bundler_cache_max_bytes", "disk"),
            },
            "totals": figures,
            "versions": self._versions(),
        }

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="status-board")

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.sample_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
