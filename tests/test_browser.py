"""The demo page in real headless Chromium: tailored, fallback, and next to RequireJS.

Chromium comes from Debian (`make test` installs it when it can). Without it these
tests are skipped with a loud reason; everything else still runs.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
# As this machine's notes advise: no sandbox as root, and no background traffic to the
# internet, which is closed here and would only fill the console with refusals.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None:
    pytest.skip(
        "!!! Chromium is not installed: the browser tests are SKIPPED. "
        "Install Debian's chromium (make test tries apt-get) to run them. !!!",
        allow_module_level=True,
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


async def open_page(browser: Browser, url: str, name: str) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": 1000, "height": 760})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(url)
    await page.wait_for_function(
        "document.getElementById('bundle-note').dataset.mode !== 'loading'", timeout=15_000
    )
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return page, problems


async def serve(
    aiohttp_server: Any, make_settings: Callable[..., Settings], **overrides: Any
) -> str:
    server = await aiohttp_server(create_app(make_settings(**overrides)))
    base = f"http://127.0.0.1:{server.port}"
    return base


async def test_demo_page_renders_from_a_tailored_bundle(
    browser: Browser, aiohttp_server: Any, make_settings: Callable[..., Settings]
) -> None:
    base = await serve(aiohttp_server, make_settings, fallback_budget_ms=-1)
    page, problems = await open_page(browser, base + "/", "demo-tailored")
    note = page.locator("#bundle-note")
    assert await note.get_attribute("data-mode") == "tailored"
    assert "from a tailored bundle" in await note.inner_text()
    assert "KB" in await note.inner_text()  # its size, from Resource Timing
    assert await page.locator(".hero h1").inner_text() == "Spring sale"
    assert await page.locator(".hero__eyebrow").inner_text() == "This week only"  # 1.1.0's hero
    assert await page.locator(".rating").count() == 1
    assert await page.locator("nav li.active a").inner_text() == "Sale"
    assert "€39.20" in await page.locator(".price").inner_text()
    assert problems == []


async def test_cold_cache_with_zero_budget_renders_from_the_fallback(
    browser: Browser, aiohttp_server: Any, make_settings: Callable[..., Settings]
) -> None:
    base = await serve(aiohttp_server, make_settings, fallback_budget_ms=0)
    page, problems = await open_page(browser, base + "/", "demo-fallback")
    note = page.locator("#bundle-note")
    assert await note.get_attribute("data-mode") == "fallback"
    assert await page.locator(".hero h1").inner_text() == "Spring sale"
    assert await page.locator(".card").count() >= 3
    # The fallback registered every module of the version, not only the page's.
    count = await page.evaluate("Object.keys(window.__bundlerModules).length")
    assert count > 20
    assert problems == []


@pytest.fixture
async def amd_site(aiohttp_server: Any) -> str:
    """The RequireJS page, with require.js from npm, on an origin of its own."""
    app = web.Application()
    page = (ROOT / "examples" / "demo" / "amd.html").read_bytes()
    require_js = (ROOT / "node_modules" / "requirejs" / "require.js").read_bytes()

    async def amd(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    async def requirejs(request: web.Request) -> web.Response:
        return web.Response(body=require_js, content_type="application/javascript")

    app.router.add_get("/amd.html", amd)
    app.router.add_get("/require.js", requirejs)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_requirejs_page_gets_its_modules_through_define(
    browser: Browser,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    amd_site: str,
) -> None:
    base = await serve(aiohttp_server, make_settings, fallback_budget_ms=-1)
    page, problems = await open_page(
        browser, f"{amd_site}/amd.html?service={base}", "demo-requirejs"
    )
    assert await page.locator("#bundle-note").get_attribute("data-mode") == "amd-tailored"
    assert await page.locator(".hero h1").inner_text() == "Loaded through RequireJS"
    assert await page.locator(".rating").inner_text() == "★★★★★ (3)"
    defined = await page.evaluate(
        "['components/hero', 'components/rating'].map((n) => require.defined(n))"
    )
    assert defined == [True, True]
    assert problems == []
