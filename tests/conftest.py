from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.checkout import default_esbuild
from bundler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "components"
NODE = shutil.which("node")

# Runs a bundle in a fresh V8 context (globalThis is the context object), then
# evaluates a check expression there and prints its value as JSON.
NODE_RUNNER = r"""
const fs = require("fs"), vm = require("vm");
const [bundleFile, setup, check] = process.argv.slice(1);
const ctx = vm.createContext({});
vm.runInContext(setup, ctx);
vm.runInContext(fs.readFileSync(bundleFile, "utf8"), ctx, { filename: "bundle.js" });
process.stdout.write(JSON.stringify(vm.runInContext(check, ctx)));
"""


@pytest.fixture
def esbuild() -> str:
    path = default_esbuild()
    if not Path(path).exists():
        pytest.fail("esbuild is missing: run `npm ci` (make test does it)")
    return path


@pytest.fixture
def make_settings(tmp_path: Path, esbuild: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "source": str(EXAMPLES),
            "data_dir": str(tmp_path / "data"),
            "esbuild": esbuild,
            "default_version": "1.1.0",
            # Tests of the tailored path wait for their build; fallback tests set a budget.
            "fallback_budget_ms": -1,
            # A test is one client (127.0.0.1) asking for dozens of cold bundles at once;
            # the limits' own tests (test_limits.py) set them.
            "client_builds_per_s": 0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


# How a build request says what it is, in esbuild's service protocol: the key "command"
# (its length, then its bytes) and a string value (kind 3, length, bytes).
BUILD_REQUEST = b"\x07\x00\x00\x00command\x03\x05\x00\x00\x00build"


@pytest.fixture
def counting_esbuild(tmp_path: Path, esbuild: str) -> tuple[str, Callable[[], int]]:
    """The real esbuild behind a wrapper that keeps a copy of what it is sent, so tests
    count the builds it was really asked for (each a packet on its service's stdin)."""
    log = tmp_path / "esbuild-stdin.log"
    wrapper = tmp_path / "esbuild-counting"
    wrapper.write_text(f'#!/bin/sh\ntee -a "{log}" | "{esbuild}" "$@"\n')
    wrapper.chmod(0o755)

    def runs() -> int:
        return log.read_bytes().count(BUILD_REQUEST) if log.exists() else 0

    return str(wrapper), runs


@pytest.fixture
async def client(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> TestClient:
    client = await aiohttp_client(create_app(make_settings()))
    await wait_ready(client)
    return client


async def wait_ready(client: TestClient, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while (await client.get("/readyz")).status != 200:
            await asyncio.sleep(0.01)


def run_in_node(tmp_path: Path, code: bytes, check: str, setup: str = "") -> Any:
    if NODE is None:
        pytest.fail("node is required to execute bundles")
    bundle_file = tmp_path / "bundle-under-test.js"
    bundle_file.write_bytes(code)
    out = subprocess.run(
        [NODE, "-e", NODE_RUNNER, "--", str(bundle_file), setup, check],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def start_service(port: int, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``bundler serve`` in its own process, stderr appended to ``log`` (a restart adds to it)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port), *flags],
            cwd=ROOT,
            stderr=out,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_process_ready(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    """Poll a server process's /readyz until 200 (it may not be listening yet)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
