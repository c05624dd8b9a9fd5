"""A full data dir is the service's fault, not the request's: answered, never a 422 or 5xx.

The data dir is a small tmpfs, filled up after start (mounting needs root; without it
these tests are skipped, loudly).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.app import SERVICE, create_app
from bundler.settings import Settings
from tests.conftest import wait_ready


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"!!! cannot mount a tmpfs here (needs root): {result.stderr.strip()} !!!")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


async def test_a_full_data_dir_gets_the_fallback_not_a_422(
    aiohttp_client: Any, make_settings: Callable[..., Settings], small_disk: Path
) -> None:
    app = create_app(make_settings(data_dir=str(small_disk / "data"), fallback_budget_ms=2000))
    client = await aiohttp_client(app)
    await wait_ready(client)
    filler = fill(small_disk)
    resp = await client.get("/bundle.js?modules=components/hero,components/card")
    text = await resp.text()
    assert resp.status == 200, text  # was: 422 "no space left on device", blamed on the source
    assert resp.headers["X-Bundle-Mode"] == "fallback"
    service = app[SERVICE]
    assert service.builder.results["disk_fault"] >= 1
    assert not service.failures  # not remembered: it is not the request's fault
    filler.unlink()
    resp = await client.get("/bundle.js?modules=components/hero,components/card")
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"


async def test_a_full_data_dir_without_a_covering_fallback_is_a_503(
    aiohttp_client: Any, make_settings: Callable[..., Settings], small_disk: Path
) -> None:
    app = create_app(make_settings(data_dir=str(small_disk / "data")))  # budget -1: no fallback
    client = await aiohttp_client(app)
    await wait_ready(client)
    fill(small_disk)
    resp = await client.get("/bundle.js?modules=components/nav")
    text = await resp.text()
    assert resp.status == 503, text
    assert "cannot write its data dir" in text and "Retry-After" in resp.headers


def test_control_esbuild_into_a_full_dir_fails_as_if_the_source_were_broken(
    small_disk: Path, esbuild: str, tmp_path: Path
) -> None:
    entry = tmp_path / "entry.js"
    entry.write_text("export const x = 1;\n" + "// padding\n" * 100)
    fill(small_disk)
    out = subprocess.run(
        [esbuild, str(entry), "--bundle", f"--outfile={small_disk / 'out.js'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0 and "no space left on device" in out.stderr.lower()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "read-only"
    (target / "data").mkdir(parents=True)
    steps = (
        ["mount", "--bind", str(target), str(target)],
        ["mount", "-o", "remount,ro,bind", str(target)],
    )
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(target)], check=False)
            pytest.skip(f"!!! cannot make a read-only mount here: {result.stderr.strip()} !!!")
    try:
        yield target / "data"
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


async def test_a_read_only_data_dir_is_not_ready_and_says_why(
    aiohttp_client: Any, make_settings: Callable[..., Settings], read_only_dir: Path
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(data_dir=str(read_only_dir), fallback_budget_ms=2000))
    )
    for _ in range(50):
        resp = await client.get("/readyz")
        text = await resp.text()
        if "cannot be written" in text:
            break
        await asyncio.sleep(0.1)
    assert resp.status == 503, text
    assert "data dir cannot be written" in text and "Read-only file system" in text
    # Requests are still answered (the static fallback covers them), never a 5xx.
    resp = await client.get("/bundle.js?modules=components/hero")
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Bundle-Mode"] == "fallback"
