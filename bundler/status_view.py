"""``bundler status URL``: the status page's summary in a terminal, for an operator
without a browser (over SSH, in a kubectl port-forward). One screen from /status.json;
``--watch`` draws it again every few seconds.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

CLEAR = "\x1b[H\x1b[2J"
NONE = "-"


class StatusUnavailable(Exception):
    pass


def fetch(url: str, token: str, timeout_s: float = 10.0) -> dict[str, Any]:
    request = urllib.request.Request(url.rstrip("/") + "/status.json")
    if token:
        request.add_header("X-Warm-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusUnavailable(
                "the server needs its warm token: --warm-token or BUNDLER_WARM_TOKEN"
            ) from None
        raise StatusUnavailable(f"HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StatusUnavailable(f"cannot read {url}/status.json: {exc}") from None


def figure(value: float | None, digits: int = 1, unit: str = "") -> str:
    return NONE if value is None else f"{value:,.{digits}f}{unit}"


def spark(values: list[float | None], width: int = 40) -> str:
    """The series as a line of block characters, the newest on the right."""
    blocks = " ▁▂▃▄▅▆▇█"
    values = values[-width:]
    top = max((v for v in values if v is not None), default=0) or 1
    return "".join(" " if v is None else blocks[round(v / top * 8)] for v in values)


def render(status: dict[str, Any], url: str) -> str:
    now = status["now"] or {}
    series = status["series"]
    answers = now.get("answers", {})
    share = now.get("tailored_share")
    bounds = status["bounds"]
    state = "draining" if status["draining"] else ("ready" if status["ready"] else "NOT READY")
    tailored = [s["tailored_share"] for s in series]
    p99 = [s["ttfb_p99_ms"] for s in series]
    lines = [
        f"bundler status  {url}  {state}  (last {now.get('seconds', 0):.0f} s; "
        f"series: {len(series) * status['sample_s']:.0f} s)",
        "",
        "answers / s     " + "  ".join(f"{k} {v:,.1f}" for k, v in answers.items() if v is not None),
        f"tailored share  {NONE if share is None else f'{share:.1%}':>8}  {spark(tailored)}",
        f"TTFB p50 / p99  {figure(now.get('ttfb_p50_ms'), 2)} / {figure(now.get('ttfb_p99_ms'), 2)} ms  {spark(p99)}",
        f"builds          queue {figure(now.get('queue'), 0)}, busy {figure(now.get('busy'), 0)} "
        f"of {status['pool_size']:.0f}, esbuild runs/s {figure(now.get('esbuild_runs'))}",
        f"event-loop lag  {figure(now.get('lag_ms'))} ms",
        f"memory tier     {now.get('memory_bytes', 0) / 2**20:,.1f} of {bounds['memory_bytes'] / 2**20:,.0f} MiB",
        f"disk tier       {now.get('disk_bytes', 0) / 2**20:,.1f} of {bounds['disk_bytes'] / 2**20:,.0f} MiB",
        "",
        f"{'version':<22}{'pulled':>7}{'pull s':>8}{'fallback usable/whole s':>25}{'KB':>8}{'left out':>9}{'carried/rebuilt':>17}",
    ]  # fmt: skip
    for v in status["versions"][:12]:
        fallback = v["fallback"] or {}
        ready = v["fallback_ready_s"]
        left = sum(fallback.get("left_out_counts", {}).values()) if fallback else None
        name = v["version"] + (" (default)" if v["default"] else "")
        lines.append(
            f"{name:<22}{'yes' if v['here'] else 'no':>7}{figure(v['pull_s'], 2):>8}"
            f"{figure(ready.get('first'), 2) + ' / ' + figure(ready.get('all'), 2):>25}"
            f"{figure(fallback.get('bytes', 0) / 1024 if fallback else None, 0):>8}"
            f"{NONE if left is None else left:>9}{str(v['carried']) + ' / ' + str(v['rebuilt']):>17}"
        )
    return "\n".join(lines)


def run(url: str, token: str, watch: bool, every_s: float = 3.0) -> int:
    while True:
        try:
            text = render(fetch(url, token), url)
        except StatusUnavailable as exc:
            print(f"bundler: status: {exc}", file=sys.stderr)
            if not watch:
                return 1
            time.sleep(every_s)
            continue
        print((CLEAR if watch else "") + text, flush=True)
        if not watch:
            return 0
        time.sleep(every_s)
