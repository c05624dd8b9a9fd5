"""Hostile and malformed requests beyond /bundle.js: every one a clear one-line 4xx,
never a 500, nothing from outside a version in any answer or log line."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
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
from bundler.settings import Settings
from tests.conftest import ROOT, free_port, wait_process_ready, wait_ready

NESTED_LIST = b"[" * 100_000 + b"]" * 100_000
NESTED_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def assert_clear(status: int, text: str, headers: Any, expected: int) -> None:
    assert status == expected, text
    assert headers.get("Cache-Control") == "no-store"
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)  # one line
    assert "Traceback" not in text


@pytest.fixture
async def token_client(aiohttp_client: Any, make_settings: Callable[..., Settings]) -> TestClient:
    client = await aiohttp_client(create_app(make_settings(warm_token="s3cret")))
    await wait_ready(client)
    return client


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (NESTED_LIST, {"Content-Type": "application/json"}),
        (NESTED_OBJECT, {"Content-Type": "application/json"}),
        (b'{"version": "1.1.0"}', {"Content-Type": "application/json; charset=bogus"}),
        (b'{"version": "1.1.0"}', {"Content-Type": "application/json; charset=rot13"}),
        (b"\xff\xfe\x00garbage", {"Content-Type": "application/json"}),
    ],
)
async def test_warm_with_malformed_json_is_a_400(
    token_client: TestClient, body: bytes, headers: dict[str, str]
) -> None:
    resp = await token_client.post(
        "/warm", data=body, headers={**headers, "X-Warm-Token": "s3cret"}
    )
    assert_clear(resp.status, await resp.text(), resp.headers, 400)
    assert "send JSON like" in await resp.text()


async def test_a_good_body_with_a_bogus_charset_still_warms(token_client: TestClient) -> None:
    resp = await token_client.post(
        "/warm",
        data=b'{"version": "1.1.0", "modules": ["components/hero"]}',
        headers={"Content-Type": "application/json; charset=bogus", "X-Warm-Token": "s3cret"},
    )
    assert resp.status == 200, await resp.text()


async def test_a_non_ascii_warm_token_is_a_403(token_client: TestClient) -> None:
    for token in ("sécret", "s3cret\u00e9", "\udcff"):
        resp = await token_client.post(
            "/warm",
            json={"version": "1.1.0", "modules": ["components/hero"]},
            headers={"X-Warm-Token": token.encode("utf-8", "surrogateescape").decode("latin-1")},
        )
        assert_clear(resp.status, await resp.text(), resp.headers, 403)


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/combos?top=%C2%B2", 400, "top=N"),  # "²": str.isdigit() says yes
        ("/combos?top=%E2%91%A0", 400, "top=N"),  # "①"
        ("/combos?top=1%0a", 400, "top=N"),
        ("/combos?top=5&top=6", 400, "top=N"),
        ("/combos?top=5&x=1", 400, "top=N"),
        ("/fallback.js.map?v=1.1.0&v=1.0.0", 400, "fallback.js.map?v=VERSION"),
        ("/fallback.json?v=1.1.0&v=1.0.0", 400, "fallback.json?v=VERSION"),
        ("/bundle.js?modules=components/hero%0a", 400, "invalid module name"),
        ("/bundle.js?modules=components/hero&v=1.1.0%0a", 400, "invalid version"),
        ("/fallback.json?v=1.1.0%0a", 400, "invalid version"),
        ("/nope", 404, "Not Found"),
        ("/bundle.js/../../etc/passwd", 404, "Not Found"),
    ],
)
async def test_odd_requests_get_one_clear_line(
    client: TestClient, path: str, status: int, fragment: str
) -> None:
    resp = await client.get(path)
    text = await resp.text()
    assert_clear(resp.status, text, resp.headers, status)
    assert fragment in text


async def test_wrong_method_and_too_large_body(client: TestClient) -> None:
    resp = await client.post("/bundle.js?modules=components/hero")
    assert_clear(resp.status, await resp.text(), resp.headers, 405)
    assert resp.headers["Allow"] == "GET,HEAD"
    resp = await client.post("/warm", data=io.BytesIO(b"x" * (1024 * 1024 + 1)))
    assert_clear(resp.status, await resp.text(), resp.headers, 413)


async def test_combos_count_only_requests_answered_with_a_bundle(client: TestClient) -> None:
    for query in (
        "modules=components/hero,components/nope",  # 404
        "modules=components/hero&v=9.9.9",  # no such version
        "modules=a%3Db",  # 400
        "modules=components/hero,components/card",  # answered
    ):
        await client.get("/bundle.js?" + query)
    combos = (await (await client.get("/combos?top=10")).json())["combos"]
    assert [c["modules"] for c in combos] == [["components/card", "components/hero"]]


def outside_version(tmp_path: Path) -> tuple[Path, str]:
    """A version whose modules reach a file outside it: by absolute path and by symlink."""
    secret = "TOP-SECRET-LINE: root:x:0:0"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.js").write_text(secret + "\n")  # not valid JavaScript: esbuild quotes it
    (outside / "value.js").write_text("export const v = 'TOP-SECRET-VALUE';\n")
    version = tmp_path / "src" / "1.0.0"
    version.mkdir(parents=True)
    (version / "ok.js").write_text("export const ok = 1;\n")
    (version / "abs.js").write_text(f'export * from "{outside / "secret.js"}";\n')
    (version / "link.js").symlink_to(outside / "secret.js")
    (version / "via-link.js").write_text('export * from "./link.js";\n')
    (version / "value-link.js").symlink_to(outside / "value.js")
    (version / "reads-value.js").write_text('export * from "./value-link.js";\n')
    good = tmp_path / "src" / "0.9.0"  # the default version: readiness does not hang on 1.0.0
    good.mkdir()
    (good / "ok.js").write_text("export const ok = 1;\n")
    return tmp_path / "src", secret


async def test_nothing_from_outside_the_version_reaches_an_answer_or_a_log(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, secret = outside_version(tmp_path)
    client = await aiohttp_client(
        create_app(make_settings(source=str(source), default_version="0.9.0"))
    )
    await wait_ready(client)
    caplog.set_level(logging.DEBUG)
    for module in ("abs", "via-link", "reads-value"):
        resp = await client.get(f"/bundle.js?modules=ok,{module}&v=1.0.0")
        text = await resp.text()
        assert resp.status == 422, text
        assert "outside" in text
        for leak in (secret, "TOP-SECRET", str(tmp_path), "secret.js", "value.js"):
            assert leak not in text, (module, leak)
            assert leak not in caplog.text, (module, leak)


def test_control_esbuild_reports_quote_the_outside_file(tmp_path: Path, esbuild: str) -> None:
    """Without the redaction, esbuild's own report shows the outside file's line."""
    source, secret = outside_version(tmp_path)
    out = subprocess.run(
        [esbuild, "abs.js", "--bundle", "--log-level=error", "--color=false"],
        cwd=source / "1.0.0", capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0 and secret in out.stderr


async def test_the_http_parser_s_refusals_are_one_line_and_logged_without_traceback(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--drain-s", "0"],
            cwd=ROOT, stderr=err, env={**os.environ},
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:
            await wait_process_ready(session, url, timeout_s=30)
        for raw in (
            b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /bundle.js HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
            b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        ):
            answer = await asyncio.to_thread(raw_request, port, raw)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer[:200]
            assert b"cache-control: no-store" in head.lower()
            assert body.count(b"\n") == 1 and body.startswith(b"bad HTTP request: "), body
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("refused a malformed HTTP request") == 5


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)
