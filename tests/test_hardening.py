"""Bad input: a clear 4xx whose message says what to fix, never a 500, nothing touched."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.settings import Settings

LONG = "a" * 201

CASES = [
    # (query string, status, fragment of the message)
    ("", 400, "missing modules="),
    ("v=1.0.0", 400, "missing modules="),
    ("modules=", 400, "empty module name"),
    ("modules=components/hero,", 400, "empty module name"),
    ("modules=components//hero", 400, "empty, '.' and '..' path segments"),
    ("modules=components/./hero", 400, "empty, '.' and '..' path segments"),
    ("modules=components/../../etc/passwd", 400, "empty, '.' and '..' path segments"),
    ("modules=..", 400, "empty, '.' and '..' path segments"),
    ("modules=/etc/passwd", 400, "must not start with '/' or '-'"),
    ("modules=-components/hero", 400, "must not start with '/' or '-'"),
    ("modules=--outfile%3D/tmp/x", 400, "invalid module name"),
    ("modules=a%3Db", 400, "invalid module name 'a=b'"),
    ("modules=comp%22onents", 400, "invalid module name"),
    ("modules=comp%5Conents", 400, "invalid module name"),
    ("modules=comp%00onents", 400, "invalid module name"),
    ("modules=comp onents", 400, "invalid module name"),
    ("modules=compönents", 400, "invalid module name"),
    (f"modules={LONG}", 400, "longer than 200 characters"),
    (
        "modules=" + ",".join(f"m{i}" for i in range(51)),
        400,
        "too many modules: 51 given, at most 50",
    ),
    ("modules=components/hero&x=1", 400, "unknown query parameter(s): x; allowed: modules, v, css"),
    ("modules=components/hero&modules=components/card", 400, "'modules' given more than once"),
    ("modules=components/hero&v=1.0.0&v=1.1.0", 400, "'v' given more than once"),
    ("modules=components/hero&v=", 400, "invalid version ''"),
    ("modules=components/hero&v=../1.0.0", 400, "invalid version"),
    ("modules=components/hero&v=1.0.0/..", 400, "invalid version"),
    ("modules=components/hero&v=1..0", 400, "invalid version"),
    ("modules=components/hero&v=-1", 400, "invalid version"),
    ("modules=components/hero&v=" + "1" * 65, 400, "invalid version"),
    ("modules=components/hero&v=9.9.9", 404, "version '9.9.9' does not exist"),
    ("modules=components/hero&v=9.9.9", 404, "GET /versions lists them"),
    ("modules=components/heor&v=1.0.0", 404, "did you mean components/hero?"),
    (
        "modules=components/heor,lib/htm&v=1.0.0",
        404,
        "did you mean components/hero (for components/heor), lib/html (for lib/htm)?",
    ),
    ("modules=lib&v=1.0.0", 404, "unknown module in version 1.0.0: lib"),
    ("modules=components/nope&v=1.0.0", 404, "unknown module in version 1.0.0: components/nope"),
    ("modules=node_modules/x&v=1.0.0", 404, "unknown module"),
]


@pytest.mark.parametrize(("query", "status", "message"), CASES)
async def test_bad_input(client: TestClient, query: str, status: int, message: str) -> None:
    resp = await client.get("/bundle.js?" + query)
    text = await resp.text()
    assert resp.status == status, text
    assert message in text
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "Traceback" not in text


async def test_invalid_input_never_reaches_esbuild(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
) -> None:
    wrapper, runs = counting_esbuild
    client = await aiohttp_client(create_app(make_settings(esbuild=wrapper)))
    for query, status, _ in CASES:
        if status == 400:
            assert (await client.get("/bundle.js?" + query)).status == 400
    assert runs() == 0


async def test_limits_are_configurable(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(
        create_app(make_settings(max_modules=2, max_module_name_chars=12))
    )
    resp = await client.get("/bundle.js?modules=a,b,c")
    assert resp.status == 400 and "at most 2 allowed" in await resp.text()
    resp = await client.get("/bundle.js?modules=components/hero")
    assert resp.status == 400 and "longer than 12 characters" in await resp.text()


async def test_unknown_path_and_method(client: TestClient) -> None:
    assert (await client.get("/bundle.js/../etc/passwd")).status == 404
    assert (await client.post("/bundle.js?modules=components/hero")).status == 405


async def test_odd_accept_encoding_and_etag_headers_are_harmless(client: TestClient) -> None:
    for headers in (
        {"Accept-Encoding": "gzip;q=abc, ;;, identity;q=0"},
        {"Accept-Encoding": "*;q=0"},
        {"If-None-Match": "garbage"},
        {"If-None-Match": 'W/"x", "y"'},
    ):
        resp = await client.get("/bundle.js?modules=components/hero", headers=headers)
        assert resp.status == 200, headers


def _odd_version(root: Path) -> Path:
    """A version holding one module and every kind of file a name must not reach."""
    version = root / "1.0.0"
    (version / "lib").mkdir(parents=True)
    (version / "lib" / "ok.js").write_text("export const ok = 1;\n")
    (version / "lib" / "widget.ts").write_text("export const widget: number = 2;\n")
    (version / "lib" / "panel").mkdir()
    (version / "lib" / "panel" / "index.js").write_text("export const panel = 3;\n")
    (version / "notes.txt").write_text("internal notes\n")
    (version / "package.json").write_text('{"name": "odd", "private_field": "secret"}\n')
    (version / "style.css").write_text(".a { color: red }\n")
    (version / "types.d.ts").write_text("export type T = string;\n")
    (version / "data.json").write_text('{"a": 1}\n')
    outside = root / "outside.js"
    outside.write_text("export const leaked = 'outside the version';\n")
    (version / "lib" / "escape.js").symlink_to(outside)
    return version


# Names that are files of the version but not JavaScript or TypeScript modules of it.
NOT_MODULES = [
    "notes.txt",
    "package.json",
    "style.css",
    "types.d.ts",
    "types.d",
    "types",
    "data.json",
    "data",
    "lib/OK",  # wrong case
    "LIB/ok.js",
    "lib/escape",  # a symlink out of the version
    "lib/escape.js",
]


@pytest.mark.parametrize("name", NOT_MODULES)
async def test_a_module_name_is_a_script_module_of_the_version(
    tmp_path: Path, aiohttp_client: Any, make_settings: Callable[..., Settings], name: str
) -> None:
    _odd_version(tmp_path / "versions")
    client = await aiohttp_client(
        create_app(make_settings(source=str(tmp_path / "versions"), default_version="1.0.0"))
    )
    resp = await client.get(f"/bundle.js?modules=lib/ok,{name}")
    text = await resp.text()
    assert resp.status == 404, text
    assert f"unknown module in version 1.0.0: {name}" in text
    for secret in ("internal notes", "secret", "outside the version", str(tmp_path)):
        assert secret not in text
    for good in ("lib/ok", "lib/ok.js", "lib/widget", "lib/widget.ts", "lib/panel"):
        assert (await client.get(f"/bundle.js?modules={good}")).status == 200, good


def test_control_esbuild_alone_bundles_whatever_file_a_name_reaches(
    tmp_path: Path, esbuild: str
) -> None:
    """Without the check, esbuild resolves these names itself and bundles them: the
    text file, package.json's every field and the file behind the symlink."""
    version = _odd_version(tmp_path / "versions")
    for name, leak in (
        ("notes.txt", "internal notes"),
        ("package.json", "secret"),
        ("lib/escape", "outside the version"),
    ):
        entry = tmp_path / "entry.js"
        entry.write_text(
            f"import * as m from {json.dumps(str(version / name))}; globalThis.m = m;\n"
        )
        out = subprocess.run(
            [esbuild, str(entry), "--bundle", "--loader:.txt=text"],
            capture_output=True, text=True, check=True, cwd=version,
        )  # fmt: skip
        assert leak in out.stdout, name


async def test_maps_and_the_loader_have_validators_and_compression(client: TestClient) -> None:
    """Source maps (megabytes for a large fallback's) and the loader: an ETag, a 304 for
    it, brotli when asked; and no Server header naming aiohttp's and Python's versions."""
    query = "modules=components/card,components/hero&v=1.1.0"
    for path in (
        f"/bundle.js.map?{query}",
        f"/bundle.css.map?{query}",
        "/fallback.js.map?v=1.1.0",
        "/loader.js",
        "/",
    ):
        plain = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert plain.status == 200, (path, await plain.text())
        body = await plain.read()
        etag = plain.headers["ETag"]
        assert "Python" not in plain.headers["Server"] and "aiohttp" not in plain.headers["Server"]
        again = await client.get(path, headers={"If-None-Match": etag, "Accept-Encoding": ""})
        assert again.status == 304, path
        brotli = await client.get(path, headers={"Accept-Encoding": "br"})
        assert brotli.headers["Content-Encoding"] == "br", path
        assert await brotli.read() == body  # the client decodes it
        assert brotli.headers["ETag"] != etag  # another representation
