"""Whole processes: `python -m bundler serve` as an operator runs it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.settings import Settings
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def bundler(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bundler", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port)],
            cwd=ROOT,
            env={
                **os.environ,
                "BUNDLER_DATA_DIR": str(tmp_path / "data"),
                "BUNDLER_LOG_FORMAT": "json",
                "BUNDLER_DRAIN_S": "0",
            },
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()


def test_serve_answers_the_readme_example(server: str) -> None:
    url = server + "/bundle.js?modules=components/hero,components/card&v=1.1.0"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert b"__bundlerModules" in body
    with urllib.request.urlopen(server + "/readyz", timeout=5) as resp:
        assert resp.status == 200


def test_serve_answers_bad_input_with_400(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server + "/bundle.js?modules=../etc/passwd", timeout=5)
    assert err.value.code == 400
    assert b"'..' path segments are not allowed" in err.value.read()
    err.value.close()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "eighty"], {}, "--port must be an integer, got 'eighty'"),
        ([], {"BUNDLER_MAX_MODULES": "-3"}, "max_modules must be at least 1"),
        (["--esbuild", "/nonexistent/esbuild"], {}, "run `npm ci`"),
        (
            ["--source", "/nonexistent/src"],
            {},
            "source directory '/nonexistent/src' does not exist",
        ),
        (["--default-version", "3.0.0"], {}, "default version: version '3.0.0' does not exist"),
        (["--default-version", "../x"], {}, "default version: invalid version '../x'"),
    ],
)
def test_bad_setting_is_one_line_and_nonzero_exit(
    args: list[str], env: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = bundler(
        "serve", "--data-dir", str(tmp_path), "--port", str(free_port()), *args, env=env
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bundler: error: ") and message in lines[0], lines


def test_help_documents_every_setting_and_its_env_var() -> None:
    result = bundler("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for field in dataclasses.fields(Settings):
        assert "--" + field.name.replace("_", "-") in text
        assert "BUNDLER_" + field.name.upper() in text


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def checkout_status() -> str:
    result = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    return result.stdout


def test_build_fallback_of_another_source_leaves_the_checkout_alone(tmp_path: Path) -> None:
    """build-fallback for a user's own 1.0.0 writes into the data dir (where the service
    finds it), never over the examples' static_fallback/1.0.0. Naive (the old default,
    --out static_fallback): the shipped fallback is overwritten."""
    source = tmp_path / "mine"
    (source / "1.0.0" / "components").mkdir(parents=True)
    (source / "1.0.0" / "components" / "hero.js").write_text("export const mine = 1;\n")
    before, shipped = checkout_status(), tree(ROOT / "static_fallback")
    result = subprocess.run(
        [sys.executable, "-m", "bundler", "build-fallback", "--source", str(source),
         "--version", "1.0.0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "data" / "fallback" / "1.0.0") in result.stdout
    assert b"mine" in (tmp_path / "data" / "fallback" / "1.0.0" / "bundle.js").read_bytes()
    assert checkout_status() == before
    assert tree(ROOT / "static_fallback") == shipped

    naive = tmp_path / "static_fallback"  # a copy standing in for the checkout's
    shutil.copytree(ROOT / "static_fallback", naive)
    subprocess.run(
        [sys.executable, "-m", "bundler", "build-fallback", "--source", str(source),
         "--version", "1.0.0", "--out", str(naive)],
        cwd=tmp_path, capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    assert tree(naive) != shipped


@pytest.mark.parametrize(
    ("command", "own", "not_its"),
    [
        ("serve", ["--port", "--drain-s", "--source"], []),
        ("warm", ["--server", "--warm-token", "--source"], ["--host", "--drain-s", "--port"]),
        ("build-fallback", ["--out", "--source"], ["--host", "--watchdog-stall-s", "--warm-token"]),
    ],
)
def test_each_command_lists_its_own_options_with_defaults(
    command: str, own: list[str], not_its: list[str]
) -> None:
    result = bundler(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in own:
        assert f"{flag} " in text
    for flag in not_its:
        assert f"{flag} " not in text
    assert "[default: data; env BUNDLER_DATA_DIR]" in text
    if command == "serve":
        assert "[default: 8080; env BUNDLER_PORT]" in text
    print(f"bundler {command} --help: {len(result.stdout.splitlines())} lines")


@pytest.mark.parametrize("access_log", ["on", "off"])
def test_every_request_leaves_one_access_log_line(tmp_path: Path, access_log: str) -> None:
    """A hit, a 400 and a 404 each leave a JSON line an operator can grep: method, path,
    status, how it was answered, bytes and duration. --access-log off: none."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--log-format", "json",
             "--drain-s", "0", "--access-log", access_log, "--fallback-budget-ms", "-1"],
            cwd=ROOT, stderr=log_file,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    paths = [
        "/bundle.js?modules=components/hero&v=1.1.0",
        "/bundle.js?modules=components/hero&v=1.1.0",
        "/bundle.js?modules=../x",
        "/bundle.js?modules=components/heor&v=1.1.0",
    ]
    try:
        wait_healthy(url, proc, log)
        for path in paths:
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(url + path, timeout=30).close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    requests = [line for line in lines if line["logger"] == "bundler.access"]
    bundles = [line for line in requests if line["path"].startswith("/bundle.js")]
    if access_log == "off":
        assert requests == []
        return
    assert [(r["path"], r["status"], r["mode"]) for r in bundles] == [
        (paths[0], 200, "built"),
        (paths[1], 200, "hit"),
        (paths[2], 400, "-"),
        (paths[3], 404, "-"),
    ]
    assert all(r["method"] == "GET" and r["duration_ms"] >= 0 for r in bundles)
    assert bundles[1]["bytes"] > 0 and bundles[1]["remote"] == "127.0.0.1"
