"""The module form (/bundle.mjs): its exports, run in Node as an ES module; its own cache
entries, beside the classic form's, sharing the version's pull and fallback; counted apart;
warmed either way; the fallback as a module; CORS on what pages load."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import wait_ready
from tests.tarballs import npm_package_source

NODE = shutil.which("node")
QUERY = "modules=components/card,components/hero&v=1.1.0"
KINDS = ("single", "batch", "survey")


def run_module(tmp_path: Path, code: bytes, check: str) -> Any:
    """Imports ``code`` as an ES module in Node and prints ``check`` (an expression over
    ``bundle``, its namespace) as JSON."""
    if NODE is None:
        pytest.fail("node is required to execute bundles")
    path = tmp_path / "bundle-under-test.mjs"
    path.write_bytes(code)
    script = (
        f"import * as bundle from {json.dumps(str(path))};\nconsole.log(JSON.stringify({check}));"
    )
    out = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def metric(text: str, name: str, label: str) -> float:
    """A sample of ``name`` with ``label`` (``""``: an unlabelled metric), 0 if absent."""
    sample = f"{name}{{{label}}} " if label else f"{name} "
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return 0.0


async def test_the_module_form_exports_each_module_under_its_name_and_registers_nothing(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    client = await aiohttp_client(create_app(make_settings(fallback_budget_ms=-1)))
    resp = await client.get(f"/bundle.mjs?{QUERY}")
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    assert resp.headers["Content-Type"] == "application/javascript; charset=utf-8"
    code = await resp.read()
    assert code.rstrip().endswith(f"//# sourceMappingURL=bundle.mjs.map?{QUERY}".encode())
    got = run_module(
        tmp_path,
        code,
        "[Object.keys(bundle).sort(), bundle['bundler:bundle'],"
        " Object.keys(bundle.default).sort(),"
        " bundle.default['components/card'] === bundle['components/card'],"
        " typeof bundle['components/hero'].render, typeof globalThis.__bundlerModules]",
    )
    assert got == [
        ["bundler:bundle", "components/card", "components/hero", "default"],
        {"version": "1.1.0", "mode": "tailored", "modules": 2},
        ["components/card", "components/hero"],
        True,
        "function",
        "undefined",  # nothing registered globally
    ]
    source_map = await client.get(f"/bundle.mjs.map?{QUERY}")
    assert source_map.status == 200
    assert "components/card.js" in json.loads(await source_map.read())["sources"]


async def test_the_two_forms_are_two_cache_entries_sharing_the_pull_and_the_fallback(
    aiohttp_client: Any, aiohttp_server: Any, make_settings: Callable[..., Settings]
) -> None:
    """lodash-es from its npm tarball: one combination in both forms is two cache entries
    and two builds, but one pull of the version and one fallback build: the module form
    costs its own esbuild run and nothing else. Each form is counted in /metrics."""
    source = await npm_package_source(aiohttp_server, "lodash-es", "4.17.21")
    settings = make_settings(source=source, default_version="4.17.21", fallback_budget_ms=-1)
    app = create_app(settings)
    client = await aiohttp_client(app)
    await wait_ready(client, timeout_s=60)
    query = "modules=chunk,debounce,kebabCase&v=4.17.21"
    classic = await client.get(f"/bundle.js?{query}")
    assert await app[SERVICE].fallbacks.get("4.17.21") is not None
    before = await (await client.get("/metrics")).text()
    module = await client.get(f"/bundle.mjs?{query}")
    again = await client.get(f"/bundle.mjs?{query}")
    assert [r.headers["Cache-Status"] for r in (classic, module, again)] == [
        "bundler; fwd=miss; stored",
        "bundler; fwd=miss; stored",
        "bundler; hit",
    ]
    assert await classic.read() != await module.read()
    assert classic.headers["ETag"] != module.headers["ETag"]
    assert app[SERVICE].tiers.memory.entries() == 2
    after = await (await client.get("/metrics")).text()
    assert metric(after, "bundler_requests_by_form_total", 'form="iife"') == 1
    assert metric(after, "bundler_requests_by_form_total", 'form="esm"') == 2
    assert metric(after, "bundler_source_pulls_total", 'result="ok"') == 1
    assert metric(after, "bundler_fallbacks_loaded", "") == 1
    runs = [
        sum(metric(text, "bundler_esbuild_runs_total", f'kind="{kind}"') for kind in KINDS)
        for text in (before, after)
    ]
    assert runs[1] - runs[0] == 1  # the module's own build; no pull, no fallback again


async def test_the_fallback_as_a_module_exports_the_same_names_and_more(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A cold module page gets the fallback with the same import statement's names;
    the tailored module replaces it once built."""
    app = create_app(make_settings(fallback_budget_ms=0))
    client = await aiohttp_client(app)
    await wait_ready(client)
    assert await app[SERVICE].fallbacks.get("1.1.0") is not None
    resp = await client.get(f"/bundle.mjs?{QUERY}")
    assert resp.headers["X-Bundle-Mode"] == "fallback"
    assert resp.headers["Cache-Status"] == "bundler; fwd=miss; detail=fallback"
    assert resp.headers["ETag"].startswith('"fb-m')
    code = await resp.read()
    classic = await client.get("/bundle.js?modules=components/rating&v=1.1.0")
    assert classic.headers["X-Bundle-Mode"] == "fallback"
    assert classic.headers["ETag"] != resp.headers["ETag"]
    got = run_module(
        tmp_path,
        code,
        "[bundle['bundler:bundle'].mode, typeof bundle['components/card'].render,"
        " typeof bundle['components/hero'].render, Object.keys(bundle).length > 20,"
        " Object.keys(bundle.default).length === Object.keys(bundle).length - 2]",
    )
    assert got == ["fallback", "function", "function", True, True]


async def test_a_warm_up_warms_either_form(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(fallback_budget_ms=-1)))
    await wait_ready(client)
    body = {"version": "1.1.0", "modules": ["components/card", "components/hero"]}
    warmed = await client.post("/warm", json={**body, "format": "esm"})
    assert warmed.status == 200 and (await warmed.json())["status"] == "built"
    module = await client.get(f"/bundle.mjs?{QUERY}")
    classic = await client.get(f"/bundle.js?{QUERY}")
    assert module.headers["Cache-Status"] == "bundler; hit"
    assert classic.headers["Cache-Status"] == "bundler; fwd=miss; stored"  # not warmed
    bad = await client.post("/warm", json={**body, "format": "umd"})
    assert bad.status == 400 and "format" in await bad.text()


@pytest.mark.parametrize(
    ("allowed", "origin", "expected"),
    [
        ("*", "https://shop.example.com", "*"),
        ("https://shop.example.com,https://blog.example.com", "https://blog.example.com", "https://blog.example.com"),
        ("https://shop.example.com", "https://evil.example.net", None),
        ("", "https://shop.example.com", None),
    ],
)  # fmt: skip
async def test_what_pages_load_says_which_origins_may_read_it(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    allowed: str,
    origin: str,
    expected: str | None,
) -> None:
    client = await aiohttp_client(create_app(make_settings(cors_origins=allowed)))
    await wait_ready(client)
    for path in (f"/bundle.mjs?{QUERY}", f"/bundle.js.map?{QUERY}", "/loader.mjs", "/bundle.mjs"):
        resp = await client.get(path, headers={"Origin": origin})
        assert resp.headers.get("Access-Control-Allow-Origin") == expected, path
        assert resp.headers.get("Timing-Allow-Origin") == expected, path
        if allowed not in ("", "*"):
            assert "Origin" in resp.headers["Vary"], path
    probe = await client.get("/readyz", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in probe.headers


async def test_a_module_page_may_link_the_css_instead(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """css=link on /bundle.mjs: the module without its CSS injector (the page links
    /bundle.css with the same query), its exports unchanged."""
    client = await aiohttp_client(create_app(make_settings()))
    injected = await (await client.get(f"/bundle.mjs?{QUERY}")).read()
    linked = await (await client.get(f"/bundle.mjs?{QUERY}&css=link")).read()
    sheet = await client.get(f"/bundle.css?{QUERY}")
    assert b"data-bundler-css" in injected and b"data-bundler-css" not in linked
    assert sheet.status == 200 and b".hero" in await sheet.read()
    got = run_module(
        tmp_path, linked, "[Object.keys(bundle).sort(), bundle['bundler:bundle'].mode]"
    )
    assert got == [["bundler:bundle", "components/card", "components/hero", "default"], "tailored"]
