"""SIGTERM with requests in flight: readiness drops at once, no accepted request is dropped."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import free_port, start_service, wait_process_ready
from tests.fakes import delayed_esbuild

pytestmark = pytest.mark.slow


async def test_sigterm_during_50_in_flight_requests_drops_none(
    tmp_path: Path, esbuild: str
) -> None:
    slow, _ = delayed_esbuild(tmp_path, esbuild, fallback_delay=1, tailored_delay=1)
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_service(
        port, log,
        "--data-dir", str(tmp_path / "data"), "--esbuild", str(slow),
        "--fallback-budget-ms", "-1", "--build-pool-size", "2",
        "--build-queue-max", "-1", "--drain-s", "1",
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


HANGING = '#!/bin/sh\nsleep 30\nexec "{real}" "$@"\n'


async def test_shutdown_keeps_its_timeout_and_answers_every_accepted_request(
    tmp_path: Path, esbuild: str
) -> None:
    """Builds that outlast the shutdown timeout: the process still exits 0 within drain +
    timeout (aiohttp alone waits twice the timeout and cuts the requests off), and each
    accepted request gets an answer, a 503 to retry elsewhere; a sketch that cannot be
    saved is logged, not fatal."""
    hanging = tmp_path / "esbuild-hanging"
    hanging.write_text(HANGING.format(real=esbuild))
    hanging.chmod(0o755)
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "server.log"
    proc = start_service(
        port, log,
        "--data-dir", str(data), "--esbuild", str(hanging),
        "--fallback-budget-ms", "-1", "--build-timeout-s", "60",
        "--drain-s", "0.5", "--shutdown-timeout-s", "2",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_process_ready(session, url, timeout_s=20)
            sketch = data / "combos.sketch"
            sketch.unlink(missing_ok=True)
            sketch.mkdir()  # the sketch's save now fails (a directory is in its way)

            async def fetch(name: str) -> int:
                async with session.get(f"{url}/bundle.js?modules=components/{name}") as resp:
                    await resp.read()
                    return resp.status

            names = ["hero", "card", "nav", "tabs", "footer", "rating"]
            requests = [asyncio.create_task(fetch(n)) for n in names]
            await asyncio.sleep(0.5)  # accepted, each waiting on a build that hangs
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            statuses = await asyncio.gather(*requests, return_exceptions=True)
            code = await asyncio.to_thread(proc.wait, 30)
            took = time.monotonic() - started
    finally:
        proc.kill()
    assert statuses == [503] * len(names), statuses  # answered, none cut off
    assert code == 0
    assert took < 0.5 + 2 + 1.5, took  # drain + timeout + the moment for the 503s
    text = log.read_text()
    assert "shutdown timeout reached" in text
    assert "could not save the popularity sketch" in text
    assert "Traceback" not in text
