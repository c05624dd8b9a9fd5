"""`bundler warm`, against a running server and offline into a data dir."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import EXAMPLES, ROOT, free_port, wait_process_ready, wait_ready

pytestmark = pytest.mark.slow

COMPONENTS = sorted(p.stem for p in (EXAMPLES / "1.1.0" / "components").glob("*.js"))
COMBOS = [
    ",".join(f"components/{c}" for c in combo)
    for combo in itertools.islice(itertools.combinations(COMPONENTS, 3), 50)
]


def write_combos(path: Path, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
    path.write_text("# popular combinations\n\n" + "\n".join([*COMBOS, *extra]) + "\n")
    return path


def run_warm(*args: str, version: str = "1.1.0") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundler", "warm", "--version", version, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


async def test_offline_warm_then_50_hits_and_no_esbuild(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    tmp_path: Path,
) -> None:
    combos = write_combos(tmp_path / "combos.txt")
    data = tmp_path / "data"
    result = await asyncio.to_thread(run_warm, "--input", str(combos), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "warmed 50 combinations" in result.stdout and "50 built" in result.stdout
    again = await asyncio.to_thread(run_warm, "--input", str(combos), "--data-dir", str(data))
    assert "0 built, 50 already cached" in again.stdout  # idempotent

    wrapper, runs = counting_esbuild
    app = create_app(make_settings(esbuild=wrapper, fallback_budget_ms=150))
    client = await aiohttp_client(app)
    await wait_ready(client)
    for line in COMBOS:
        resp = await client.get(f"/bundle.js?modules={line}&v=1.1.0")
        assert resp.headers["X-Bundle-Mode"] == "tailored"
    assert app[SERVICE].tiers.lookups["disk_hit"] == 50
    assert runs() == 0


async def test_warm_against_a_running_server(tmp_path: Path, esbuild: str) -> None:
    log = tmp_path / "esbuild-runs"
    wrapper = tmp_path / "esbuild-counting"
    wrapper.write_text(f'#!/bin/sh\necho run >> "{log}"\nexec "{esbuild}" "$@"\n')
    wrapper.chmod(0o755)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BUNDLER_WARM_TOKEN": "s3cret", "BUNDLER_DRAIN_S": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "bundler", "serve", "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--esbuild", str(wrapper)],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await wait_process_ready(session, url, timeout_s=20)
            async with session.post(
                url + "/warm", json={"version": "1.1.0", "modules": ["components/nav"]}
            ) as resp:
                assert resp.status == 403  # no token
            combos = write_combos(
                tmp_path / "combos.txt", extra=["components/hero,components/nope"]
            )
            result = await asyncio.to_thread(
                lambda: subprocess.run(
                    [sys.executable, "-m", "bundler", "warm", "--version", "1.1.0",
                     "--input", str(combos), "--server", url],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                )
            )  # fmt: skip
            assert result.returncode == 1
            assert "50 built, 0 already cached, 1 failed" in result.stdout
            assert (
                "failed: components/hero,components/nope: HTTP 404: unknown module" in result.stderr
            )
            built = len(log.read_text().splitlines())
            # 50 bundles, several to an esbuild run when they queue together; the
            # unknown module is refused before esbuild runs.
            assert 0 < built <= 50
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            assert 'bundler_builds_total{result="ok"} 50.0' in text
            for line in COMBOS:
                async with session.get(f"{url}/bundle.js?modules={line}&v=1.1.0") as resp:
                    assert resp.headers["X-Bundle-Mode"] == "tailored"
            assert len(log.read_text().splitlines()) == built  # 50 hits, no esbuild
            async with session.get(url + "/metrics") as resp:
                text = await resp.text()
            assert 'bundler_requests_total{mode="hit"} 50.0' in text
            # The warm-up can take its list from the live server's /combos.
            result = await asyncio.to_thread(
                lambda: subprocess.run(
                    [sys.executable, "-m", "bundler", "warm", "--version", "1.1.0",
                     "--from-server", url, "--top", "10", "--server", url],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                )
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "warmed 10 combinations" in result.stdout
            assert "0 built, 10 already cached" in result.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


def test_warm_needs_an_input(tmp_path: Path) -> None:
    result = run_warm("--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--input FILE" in result.stderr


def test_offline_warm_from_stdin_names_what_failed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bundler", "warm", "--version", "1.0.0", "--input", "-",
         "--data-dir", str(tmp_path / "data")],
        input="components/hero\ncomponents/hero,components/cookie-banner\n",
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "1 built, 0 already cached, 1 failed" in result.stdout
    assert (
        "failed: components/hero,components/cookie-banner: "
        "unknown module in version 1.0.0: components/cookie-banner"
    ) in result.stderr


async def test_offline_warm_of_a_release_carries_over_what_did_not_change(tmp_path: Path) -> None:
    """1.1.0 changed card.js and hero.js, not tabs, accordion or countdown: warmed from the
    data dir that holds 1.0.0's bundles, those are carried over (no esbuild run), the
    others are built, and the report says why. Without --carry-from, all are built."""
    combos = tmp_path / "combos.txt"
    unchanged = ["components/tabs", "components/accordion,components/tabs", "components/countdown"]
    changed = ["components/card", "components/hero,components/tabs"]
    combos.write_text("\n".join(unchanged + changed) + "\n")
    data = tmp_path / "data"
    flags = ("--input", str(combos), "--data-dir", str(data))
    old = await asyncio.to_thread(run_warm, *flags, version="1.0.0")
    assert old.returncode == 0 and "5 built" in old.stdout, old.stdout + old.stderr
    plain = await asyncio.to_thread(run_warm, *flags[:2], "--data-dir", str(tmp_path / "plain"))
    assert "5 built, 0 already cached, 0 failed, 0 carried over" in plain.stdout, plain.stdout
    new = await asyncio.to_thread(run_warm, *flags, "--carry-from", "1.0.0")
    assert new.returncode == 0, new.stderr
    assert "2 built, 0 already cached, 0 failed, 3 carried over" in new.stdout, new.stdout
    assert "rebuilt, changed: 2" in new.stdout, new.stdout
