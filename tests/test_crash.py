"""kill -9 of the server in the middle of extracting a version, then a restart."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bundler import extract
from tests.conftest import free_port, run_in_node, start_service, wait_process_ready
from tests.tarballs import LIB_FILES, ArtifactServer, make_tarball

pytestmark = pytest.mark.slow

# Enough files that extraction takes a while, so the kill lands in the middle of it.
PADDING = b"// padding\n" * 300
FILLER = {
    f"filler/f{i:05d}.js": f"export const v{i} = {i};\n".encode() + PADDING for i in range(4000)
}


def start_server(port: int, data_dir: Path, template: str, log: Path) -> subprocess.Popen[bytes]:
    return start_service(
        port, log, "--data-dir", str(data_dir), "--source", template,
        "--default-version", "1.0.0", "--drain-s", "0",
    )  # fmt: skip


async def wait_for_extraction(sources: Path, proc: subprocess.Popen[bytes]) -> Path:
    async with asyncio.timeout(30):
        while proc.poll() is None:
            for work in sources.glob(f"{extract.TMP_PREFIX}1.0.0-*"):
                filler = work / "content" / "package" / "filler"
                if filler.is_dir() and any(filler.iterdir()):
                    return work
            await asyncio.sleep(0.002)
    raise AssertionError("the server exited before extracting")


async def test_kill_9_during_extraction_then_restart(aiohttp_server: Any, tmp_path: Path) -> None:
    artifacts = ArtifactServer()
    artifacts.publish("1.0.0", make_tarball({**LIB_FILES, **FILLER}))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    data = tmp_path / "data"
    sources = data / "sources"
    log = tmp_path / "server.log"
    port = free_port()

    first = start_server(port, data, artifacts.template, log)
    try:
        work = await wait_for_extraction(sources, first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=10)
    assert work.exists(), "the kill should leave the unfinished work dir behind"
    assert extract.installed_root(sources, "1.0.0") is None, "killed too late: already installed"

    second = start_server(port, data, artifacts.template, log)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            await wait_process_ready(session, url, timeout_s=60)
            async with session.get(url + "/bundle.js?modules=index,filler/f00042") as resp:
                assert resp.status == 200, await resp.text()
                code = await resp.read()
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=10) == 0
    assert not work.exists()
    assert not list(sources.glob(extract.TMP_PREFIX + "*"))
    assert artifacts.hits["1.0.0"] == 2
    result = run_in_node(
        tmp_path,
        code,
        '[__bundlerModules["index"].greet("x"), __bundlerModules["filler/f00042"].v42]',
    )
    assert result == ["HI X!", 42]
