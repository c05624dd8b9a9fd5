"""Faults the real esbuild cannot be made to show: a hang and a crash, by small fakes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import wait_ready

HANG = """#!/bin/sh
# A fake esbuild that hangs and leaves a grandchild behind, as a stuck build might.
echo $$ >> "{pids}"
sleep 300 &
echo $! >> "{pids}"
wait
"""

CRASH = """#!/bin/sh
echo run >> "{pids}"
kill -SEGV $$
"""


def fake(tmp_path: Path, script: str) -> tuple[str, Path]:
    pids = tmp_path / "fake-pids"
    path = tmp_path / "fake-esbuild"
    path.write_text(script.format(pids=pids))
    path.chmod(0o755)
    return str(path), pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping remains


async def wait_until_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


async def test_hanging_build_is_killed_at_the_deadline_with_its_children(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    esbuild, pids_file = fake(tmp_path, HANG)
    client = await aiohttp_client(create_app(make_settings(esbuild=esbuild, build_timeout_s=0.5)))
    started = time.monotonic()
    resp = await client.get("/bundle.js?modules=components/hero")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert "did not finish within 0.5 s" in await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    assert elapsed < 3
    pids = [int(p) for p in pids_file.read_text().split()]
    assert len(pids) == 2
    assert await wait_until_gone(pids) == []
    # Removed once the slot is given back, behind the answer.
    for _ in range(100):
        if not list((tmp_path / "data" / "tmp").iterdir()):
            break
        await asyncio.sleep(0.02)
    assert not list((tmp_path / "data" / "tmp").iterdir()), "scratch dir left behind"
    timed_out = [r for r in caplog.records if r.getMessage().startswith("build timed out")]
    assert len(timed_out) == 1 and timed_out[0].levelname == "WARNING"
    assert timed_out[0].bundle == "modules=components/hero&v=1.1.0"  # type: ignore[attr-defined]


async def test_build_dirs_left_by_a_killed_process_are_removed_at_start(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    scratch = tmp_path / "data" / "tmp"
    old = scratch / "build-left-by-kill-9"
    (old / "0").mkdir(parents=True)
    (old / "0" / "entry.js").write_text("// half a build\n")
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    young = scratch / "build-of-a-live-process"  # another process's build, under way
    young.mkdir()
    client = await aiohttp_client(create_app(make_settings(build_timeout_s=20)))
    await wait_ready(client)
    assert not old.exists()
    assert young.exists()


async def test_control_killing_only_the_child_pid_leaves_the_grandchild(tmp_path: Path) -> None:
    """Why the builder kills the process group: a plain kill() misses what the build started."""
    esbuild, pids_file = fake(tmp_path, HANG)
    proc = await asyncio.create_subprocess_exec(esbuild, start_new_session=True)
    while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
        await asyncio.sleep(0.02)
    proc.kill()
    await proc.wait()
    grandchild = int(pids_file.read_text().split()[1])
    try:
        assert await wait_until_gone([grandchild], timeout_s=0.5) == [grandchild]
    finally:
        os.kill(grandchild, signal.SIGKILL)


async def test_crashing_build_is_500_and_not_remembered(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    esbuild, runs_file = fake(tmp_path, CRASH)
    client = await aiohttp_client(create_app(make_settings(esbuild=esbuild)))
    for attempt in (1, 2):
        resp = await client.get("/bundle.js?modules=components/hero")
        text = await resp.text()
        assert resp.status == 500
        assert "without an error report" in text and "Traceback" not in text
        assert len(runs_file.read_text().split()) == attempt


RECORD = """#!/bin/sh
# Runs the real esbuild, then records how it ran: its niceness is set just after the
# start, on the whole process group, so it is read once the run is over.
"{real}" "$@"
status=$?
echo "$(nice) $GOMAXPROCS $(pwd)" >> "{pids}"
exit $status
"""


async def test_esbuild_runs_niced_with_gomaxprocs_in_the_source_root(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path, esbuild: str
) -> None:
    script = RECORD.replace("{real}", esbuild)
    fake_path, record = fake(tmp_path, script)
    settings = make_settings(
        esbuild=fake_path, build_pool_size=3, build_threads=2, build_niceness=7, fallback_dir=""
    )
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)  # the default version's fallback: built, everyone waits on it
    resp = await client.get("/bundle.js?modules=components/hero&v=1.0.0")
    assert resp.status == 200
    fallback_run, tailored_run = record.read_text().splitlines()
    niceness, gomaxprocs, cwd = tailored_run.split()
    assert int(niceness) == os.nice(0) + 7 + 5  # and yields to a fallback's build
    assert gomaxprocs == "6"  # alone: the idle CPUs (its share, 2, under load: test_batch)
    assert Path(cwd) == Path(settings.source).resolve() / "1.0.0"
    niceness, gomaxprocs, cwd = fallback_run.split()
    assert int(niceness) == os.nice(0) + 7
    assert gomaxprocs == "6"  # the whole pool's CPUs
    assert Path(cwd) == Path(settings.source).resolve() / "1.1.0"
