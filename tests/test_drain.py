"""SIGTERM with requests in flight: readiness drops at once, no accepted request is dropped."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, free_port, wait_process_ready

pytestmark = pytest.mark.slow

SLOW = '#!/bin/sh\nsleep 1\nexec "{real}" "$@"\n'


async def test_sigterm_during_50_in_flight_requests_drops_none(
    tmp_path: Path, esbuild: str
) -> None:
    slow = tmp_path / "esbuild-slow"
    slow.write_text(SLOW.format(real=esbuild))
    slow.chmod(0o755)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "bundler", "serve", "--port", str(port),
                "--data-dir", str(tmp_path / "data"), "--esbuild", str(slow),
                "--fallback-budget-ms", "-1", "--build-pool-size", "2",
                "--build-queue-max", "-1", "--drain-s", "1",
            ],
            cwd=ROOT,
            stderr=out,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_process_ready(session, url, timeout_s=20)

            async def fetch(i: int) -> tuple[int, str]:
                modules = [
                    "components/hero",
                    "components/card",
                    "components/nav",
                    "components/tabs",
                ]
                async with session.get(f"{url}/bundle.js?modules={modules[i % 4]}") as resp:
                    return resp.status, resp.headers.get("X-Bundle-Mode", "")

            requests = [asyncio.create_task(fetch(i)) for i in range(50)]
            await asyncio.sleep(0.3)  # all sent and waiting on builds
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with session.get(url + "/readyz") as resp:
                assert resp.status == 503  # draining, but still answering
            results = await asyncio.gather(*requests)
        assert results == [(200, "tailored")] * 50
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert "draining" in text and "stopped" in text
