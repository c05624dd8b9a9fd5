"""Faults the real esbuild cannot be made to show: a hang and a crash, by small fakes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.build import pool as pool_module
from bundler.build import run as build_run
from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, BuildOutput
from bundler.errors import BuildCrashed, BuildTimeout
from bundler.resolve import resolve_modules
from bundler.settings import Settings
from bundler.spec import BuildOptions, BundleSpec
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


def esbuild_children() -> dict[int, tuple[set[int], str]]:
    """{pid: (the nice value of each of its threads, its GOMAXPROCS)} of every esbuild
    this process started."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[1]) != os.getpid() or "esbuild" not in os.readlink(f"/proc/{pid}/exe"):
                continue
            nices = {
                int(t.read_text().rsplit(")", 1)[1].split()[16])
                for t in Path(f"/proc/{pid}/task").glob("*/stat")
            }
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        gomaxprocs = next((e[11:].decode() for e in env if e.startswith(b"GOMAXPROCS=")), "")
        found[pid] = (nices, gomaxprocs)
    return found


async def test_esbuild_runs_niced_with_the_pools_cpus(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A fallback's esbuild and the one every other build goes to: each nicer than the
    service (the other nicer still: it yields to a fallback's build), every thread of it,
    and with the pool's CPUs (builds in flight on it share them)."""
    settings = make_settings(  # no prebuilt fallback: both esbuilds run
        build_pool_size=3, build_threads=2, build_niceness=7, fallback_dir=str(tmp_path / "none")
    )
    before = set(esbuild_children())  # other tests' builders, not yet ended
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)  # the default version's fallback: built, everyone waits on it
    resp = await client.get("/bundle.js?modules=components/hero&v=1.0.0")
    assert resp.status == 200
    own = os.nice(0)
    ours = [v for pid, v in esbuild_children().items() if pid not in before]
    assert sorted(ours) == [({own + 7}, "6"), ({own + 7 + 5}, "6")]


# A fake esbuild that is the real one behind a relay; the first one started answers
# nothing once it has said its version (every build on it hangs), later ones relay all.
HANG_FIRST = """#!{python}
import os, subprocess, sys, threading, time
real = subprocess.Popen(["{real}", *sys.argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
hang = "--version" not in sys.argv
if hang:
    try:
        os.close(os.open("{marker}", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        hang = False
def forward():
    while data := os.read(0, 65536):
        real.stdin.write(data)
        real.stdin.flush()
    real.stdin.close()
threading.Thread(target=forward, daemon=True).start()
first = True
while data := os.read(real.stdout.fileno(), 65536):
    if first or not hang:
        os.write(1, data)
    first = False
real.wait()
"""


@pytest.mark.parametrize("rerun", [True, False], ids=["rerun", "naive"])
async def test_a_deadline_kills_its_esbuild_and_the_other_builds_on_it_run_again(
    tmp_path: Path, esbuild: str, monkeypatch: pytest.MonkeyPatch, rerun: bool
) -> None:
    """A build cannot be stopped alone: at its deadline its esbuild is killed, with the
    builds in flight beside it. Those did nothing wrong and run again on a new esbuild;
    naive (no second attempt), they fail as crashed."""
    path = tmp_path / "esbuild-hang-first"
    path.write_text(
        HANG_FIRST.format(python=sys.executable, real=esbuild, marker=tmp_path / "hung")
    )
    path.chmod(0o755)
    if not rerun:
        monkeypatch.setattr(build_run, "ATTEMPTS_AFTER_A_KILL", 0)
    builder = Builder(
        str(path), tmp_path / "tmp", pool_size=2, threads_per_build=1, timeout_s=1, niceness=0
    )
    root = Path(__file__).resolve().parent.parent / "examples" / "components" / "1.1.0"

    def build(modules: tuple[str, ...]) -> Any:
        spec = BundleSpec("1.1.0", modules, BuildOptions("es2018", "bundler"))
        registrations = resolve_modules(root, "1.1.0", spec.modules)
        return builder.build(BuildJob.tailored(spec, registrations), root)

    try:
        first = asyncio.ensure_future(build(("components/hero",)))
        await asyncio.sleep(0.3)  # in flight when the first one's deadline comes
        second = await asyncio.gather(build(("components/card",)), return_exceptions=True)
        with pytest.raises(BuildTimeout):
            await first
        if rerun:
            assert isinstance(second[0], BuildOutput) and b"card" in second[0].code
        else:
            assert isinstance(second[0], BuildCrashed)
    finally:
        await builder.close()


@pytest.mark.parametrize("idle_s", [0.2, 3600.0], ids=["ends-when-idle", "naive"])
async def test_an_idle_esbuild_ends_and_the_next_build_starts_another(
    tmp_path: Path, esbuild: str, monkeypatch: pytest.MonkeyPatch, idle_s: float
) -> None:
    """A fallback's build leaves its esbuild holding memory; with nothing to build it ends
    (naive: it stays), and the next build starts another."""
    monkeypatch.setattr(pool_module, "SERVICE_IDLE_S", idle_s)
    builder = Builder(
        esbuild, tmp_path / "tmp", pool_size=1, threads_per_build=1, timeout_s=20, niceness=0
    )
    root = Path(__file__).resolve().parent.parent / "examples" / "components" / "1.1.0"

    def job(modules: tuple[str, ...]) -> BuildJob:
        spec = BundleSpec("1.1.0", modules, BuildOptions("es2018", "bundler"))
        return BuildJob.tailored(spec, resolve_modules(root, "1.1.0", spec.modules))

    before = set(esbuild_children())
    try:
        await builder.build(job(("components/card",)), root)
        assert len(set(esbuild_children()) - before) == 1
        await asyncio.sleep(0.6)
        left = set(esbuild_children()) - before
        assert len(left) == (0 if idle_s < 1 else 1)
        output = await builder.build(job(("components/hero",)), root)
        assert b"hero" in output.code
        assert builder.starts == (2 if idle_s < 1 else 1)
    finally:
        await builder.close()


# A fake esbuild that speaks its protocol's first packet, then answers a request with a
# value of a kind the protocol has not got.
GARBAGE = """#!{python}
import os, struct, sys
if "--version" in sys.argv:
    print("0.0.0-fake")
    sys.exit(0)
version = b"0.0.0-fake"
os.write(1, struct.pack("<I", len(version)) + version)
size = struct.unpack("<I", sys.stdin.buffer.read(4))[0]
(head,) = struct.unpack_from("<I", sys.stdin.buffer.read(size))
body = struct.pack("<I", head | 1) + b"\\x09"
os.write(1, struct.pack("<I", len(body)) + body)
sys.stdin.buffer.read()
"""


async def test_an_esbuild_that_breaks_its_protocol_fails_the_build_at_once(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Not a hang until the deadline: what cannot be read is a crash, answered at once."""
    path = tmp_path / "esbuild-garbage"
    path.write_text(GARBAGE.format(python=sys.executable))
    path.chmod(0o755)
    settings = make_settings(
        esbuild=str(path), build_timeout_s=10, fallback_dir=str(tmp_path / "none")
    )
    client = await aiohttp_client(create_app(settings))
    started = time.monotonic()
    resp = await client.get("/bundle.js?modules=components/hero&v=1.0.0")
    assert resp.status == 500
    assert "without an error report" in await resp.text()
    assert time.monotonic() - started < 5
