"""A full data dir is the service's fault, not the request's: answered, never a 422 or 5xx.

The data dir is a small tmpfs, filled up after start (mounting needs root; without it
these tests are skipped, loudly).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.bundle import Bundle
from bundler.fsutil import atomic_write
from bundler.keys import SERVICE
from bundler.settings import Settings
from bundler.tiers.disk import DiskTier, encode_entry
from tests.conftest import wait_ready
from tests.tarballs import LIB_FILES, ArtifactServer, make_tarball
from tests.test_fallback import metrics


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


async def test_a_server_started_on_a_read_only_data_dir_is_ready_and_serves(
    aiohttp_client: Any, make_settings: Callable[..., Settings], read_only_dir: Path
) -> None:
    """Its fallback loads (static_fallback/), so it can serve: ready, as a server whose
    disk broke after its start is; /readyz's body, the log and /metrics say what is
    wrong. (It was 503 for as long as the disk was bad: a pod never past its startup
    probe, restarted again and again.)"""
    client = await aiohttp_client(
        create_app(make_settings(data_dir=str(read_only_dir), fallback_budget_ms=2000))
    )
    await wait_ready(client)
    resp = await client.get("/readyz")
    text = await resp.text()
    assert resp.status == 200, text
    assert "degraded: the data dir cannot be written" in text and "Read-only file system" in text
    assert (await metrics(client))["bundler_data_dir_writable"] == 0
    # Requests are answered (the static fallback covers them), never a 5xx.
    resp = await client.get("/bundle.js?modules=components/hero")
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Bundle-Mode"] == "fallback"


@pytest.mark.parametrize("cleanup", ["service", "naive"])
async def test_the_scratch_dirs_of_builds_that_failed_on_a_full_disk_go_at_once(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup: str,
) -> None:
    """Each build that could not write its entry left its scratch dir behind until the
    next start (593 after one storm). Naive (nothing removed): they pile up."""
    if cleanup == "naive":
        monkeypatch.setattr("bundler.build.scratch.shutil.rmtree", lambda *args, **kwargs: None)
    app = create_app(make_settings(data_dir=str(small_disk / "data"), fallback_budget_ms=2000))
    client = await aiohttp_client(app)
    await wait_ready(client)
    fill(small_disk)
    names = ["components/hero", "components/card", "components/nav", "components/tabs"]
    for i, name in enumerate(names):
        resp = await client.get(f"/bundle.js?modules={name},{names[i - 1]}")
        assert resp.status == 200, await resp.text()  # the fallback
    await asyncio.sleep(0.2)
    assert app[SERVICE].builder.results["disk_fault"] >= len(names)
    left = [p.name for p in (small_disk / "data" / "tmp").iterdir() if p.name.startswith("build-")]
    assert (left == []) == (cleanup == "service"), left


def random_bundle(i: int, size: int = 200_000) -> Bundle:
    return Bundle.create(f"{i:064x}", os.urandom(size))  # incompressible: its size on disk


def test_the_disk_tier_leaves_its_volume_the_free_space_it_is_told(small_disk: Path) -> None:
    disk = DiskTier(small_disk / "cache", max_bytes=1 << 30, min_free_bytes=1 << 20)
    for i in range(40):  # 40 x ~600 KB (code, gzip, br) on a 4 MiB volume
        disk.write(random_bundle(i))
        assert shutil.disk_usage(small_disk).free >= (1 << 20) - 65536
    assert 0 < disk.entries() < 40
    assert disk.read(f"{39:064x}") is not None  # the newest kept, the oldest evicted
    assert disk.read(f"{0:064x}") is None


def test_a_full_volume_makes_the_tier_evict_even_without_a_free_space_floor(
    small_disk: Path,
) -> None:
    """min_free_bytes 0: the tier alone fills the volume; then its oldest entries make
    room for the newest, as they would past max_bytes."""
    disk = DiskTier(small_disk / "cache", max_bytes=1 << 30, min_free_bytes=0)
    for i in range(40):  # 40 x ~400 KB (code, br) on a 4 MiB volume
        disk.write(random_bundle(i))
    assert 0 < disk.entries() < 40
    assert disk.read(f"{39:064x}") is not None and disk.read(f"{0:064x}") is None


def test_control_writes_that_do_not_evict_fill_the_volume(small_disk: Path) -> None:
    """The same entries written as the tier wrote them before (no eviction on a full
    volume): the volume fills and writes fail."""
    disk = DiskTier(small_disk / "cache", max_bytes=1 << 30)
    with pytest.raises(OSError) as caught:
        for i in range(40):
            bundle = random_bundle(i)
            atomic_write(disk.path(bundle.key), encode_entry(bundle))
    assert caught.value.errno == errno.ENOSPC


async def test_a_pull_that_cannot_be_installed_is_remembered_and_says_why(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    small_disk: Path,
) -> None:
    artifacts = ArtifactServer()
    artifacts.publish("1.0.0", make_tarball(LIB_FILES))
    # A version bigger than what is left (random bytes do not compress).
    artifacts.publish("2.0.0", make_tarball({**LIB_FILES, "big.js": os.urandom(3 << 20)}))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    client = await aiohttp_client(
        create_app(
            make_settings(
                source=artifacts.template,
                default_version="1.0.0",
                data_dir=str(small_disk / "data"),
                extract_max_file_bytes=8 << 20,
            )
        )
    )
    await wait_ready(client)
    fill_to = small_disk / "filler"
    fill_to.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (1 << 20)))
    for _ in range(3):
        resp = await client.get("/bundle.js?modules=index&v=2.0.0")
        text = await resp.text()
        assert resp.status == 503, text
        assert "cannot write its data dir" in text and "corrupt" not in text
    assert artifacts.hits["2.0.0"] == 1  # remembered like any failed pull: no download storm
