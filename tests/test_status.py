"""The status board and its endpoints: rates from consecutive figures, TTFB percentiles per
interval, /status.json against /metrics at one moment, the page without JavaScript, the
warm token, and `bundler status` in a terminal."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from bundler.app import create_app
from bundler.settings import Settings
from bundler.status import Figures, StatusBoard
from tests.conftest import ROOT, free_port, start_service, wait_process_ready, wait_ready

QUERY = "/bundle.js?modules=components/card,components/hero&v=1.1.0"


def test_a_sample_turns_consecutive_figures_into_rates_and_its_own_ttfb() -> None:
    """The board's input is the figures /metrics shows: counters become rates over the
    interval, gauges are read as they are, TTFB percentiles are of that interval only."""
    figures: list[Figures] = [
        {"bundler_requests": {"hit": 10.0, "fallback": 2.0}, "bundler_build_queue_depth": 3.0},
        {"bundler_requests": {"hit": 30.0, "fallback": 2.0, "built": 4.0}, "bundler_build_queue_depth": 1.0},
    ]  # fmt: skip
    board = StatusBoard(lambda: figures.pop(0), list)
    board.sample(now=100.0)
    for ms in range(1, 101):
        board.observe(ms / 1000)
    board.sample(now=102.0)
    (sample,) = board.samples
    assert sample["answers"]["hit"] == 10.0 and sample["answers"]["built"] == 2.0
    assert sample["answers"]["fallback"] == 0.0
    assert sample["tailored_share"] == 1.0
    assert sample["queue"] == 1.0
    assert sample["ttfb_p50_ms"] == pytest.approx(51.0) and sample["ttfb_p99_ms"] == 100.0


def test_ttfb_past_the_kept_requests_stays_a_fair_sample() -> None:
    """Past MAX_TIMES requests in one interval a uniform sample is kept: a slow quarter
    that comes last still shows in the p99 (keeping only the first ones, the naive bound,
    would show 1 ms)."""
    board = StatusBoard(lambda: {}, list)
    board.sample(now=0.0)
    for _ in range(15_000):
        board.observe(0.001)
    for _ in range(5_000):
        board.observe(0.5)
    board.sample(now=2.0)
    assert board.samples[-1]["ttfb_p50_ms"] == 1.0
    assert board.samples[-1]["ttfb_p99_ms"] == 500.0


def metric_samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_status_json_agrees_with_metrics_at_the_same_moment(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(fallback_budget_ms=-1)))
    await wait_ready(client)
    for modules in ("components/card", "components/hero", "components/card,components/tabs"):
        for _ in range(3):
            assert (await client.get(f"/bundle.js?modules={modules}&v=1.1.0")).status == 200
    await client.get("/bundle.js?modules=nope&v=1.1.0")
    await asyncio.sleep(0.2)  # the disk writes behind the answers
    metrics = metric_samples(await (await client.get("/metrics")).text())
    status = await (await client.get("/status.json")).json()
    totals = status["totals"]
    compared = 0
    for name, labels in (
        ("bundler_requests_total", "mode"),
        ("bundler_builds_total", "result"),
        ("bundler_esbuild_runs_total", "kind"),
        ("bundler_cache_lookups_total", "result"),
        ("bundler_cache_bytes", "tier"),
        ("bundler_cache_entries", "tier"),
        ("bundler_limited_total", "reason"),
    ):
        family = totals[name.removesuffix("_total")]
        assert family, name
        for label, value in family.items():
            assert metrics[f'{name}{{{labels}="{label}"}}'] == value, (name, label)
            compared += 1
    assert metrics['bundler_requests_total{mode="hit"}'] == 6
    assert compared >= 12
    assert status["versions"][0]["version"] == "1.1.0" and status["versions"][0]["default"]


async def test_the_page_shows_the_numbers_without_javascript_and_is_never_cached(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings()))
    await wait_ready(client)
    resp = await client.get("/status")
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    assert "script-src" not in resp.headers["Content-Security-Policy"]  # 'self' only
    page = await resp.text()
    assert "<th>tailored share</th>" in page
    assert "<td>1.1.0 (default)</td><td>yes</td>" in page
    assert (await client.get("/status.json")).headers["Cache-Control"] == "no-store"
    script = await client.get("/status.js")
    assert script.status == 200 and "polyline" in await script.text()


async def test_the_warm_token_guards_the_status_page(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(warm_token="s3cret")))
    await wait_ready(client)
    for path in ("/status", "/status.json"):
        refused = await client.get(path)
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="bundler status"'
        wrong = base64.b64encode(b"ops:guess").decode()
        assert (await client.get(path, headers={"Authorization": f"Basic {wrong}"})).status == 401
        basic = base64.b64encode(b"ops:s3cret").decode()
        assert (await client.get(path, headers={"Authorization": f"Basic {basic}"})).status == 200
        assert (await client.get(path, headers={"X-Warm-Token": "s3cret"})).status == 200
    assert (await client.get("/status", headers={"Authorization": "Basic ###"})).status == 401


async def test_bundler_status_prints_the_summary_in_a_terminal(tmp_path: Any) -> None:
    """`bundler status URL` against a real `bundler serve`: one screen, the token sent."""
    import aiohttp

    port = free_port()
    server = start_service(
        port, tmp_path / "server.log", "--data-dir", str(tmp_path / "data"), "--warm-token", "t0k"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_process_ready(session, url, timeout_s=30)
            for _ in range(5):
                async with session.get(url + QUERY) as resp:
                    assert resp.status == 200
        await asyncio.sleep(4.5)  # two samples
        command = [sys.executable, "-m", "bundler", "status", url]
        refused = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert refused.returncode != 0 and "warm token" in refused.stderr
        done = subprocess.run(
            [*command, "--warm-token", "t0k"], capture_output=True, text=True, cwd=ROOT, timeout=30
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "ready" in out and "tailored share" in out and "1.1.0 (default)" in out
        assert len(out.splitlines()) < 40  # one screen
    finally:
        server.terminate()
        server.wait(timeout=30)
