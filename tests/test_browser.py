"""The demo page in real headless Chromium: tailored, fallback, and next to RequireJS;
components that bring their CSS and images.

Chromium comes from Debian (`make test` installs it when it can). Without it these
tests are skipped with a loud reason; everything else still runs.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import EXAMPLES, ROOT
from tests.test_css import ACCENT, write_styled_version
from tests.test_npm import npm_settings, registry  # noqa: F401 (fixtures)

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
    await assert_components_styled(page)
    assert problems == []


async def assert_components_styled(page: Page) -> None:
    """The page itself has layout CSS only: these styles came with the components."""
    hero = await page.evaluate(
        "(() => { const s = getComputedStyle(document.querySelector('.hero'));"
        " return [s.backgroundColor, s.paddingTop, s.backgroundImage.slice(0, 30)]; })()"
    )
    assert hero == ["rgb(36, 48, 94)", "32px", 'url("data:image/svg+xml,<svg x']
    assert await page.evaluate(
        "getComputedStyle(document.querySelector('.card')).borderRadius"
    ) == ("12px")
    assert await page.evaluate("getComputedStyle(document.querySelector('.rating')).color") == (
        "rgb(230, 161, 0)"
    )


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
    await assert_components_styled(page)
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


async def page_site(aiohttp_server: Any, html: str) -> str:
    """A page on an origin of its own (as a customer's site is); its URL."""
    site = web.Application()

    async def page_handler(request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    site.router.add_get("/page.html", page_handler)
    server = await aiohttp_server(site)
    return f"http://127.0.0.1:{server.port}/page.html"


STYLED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>styled components</title>
<link rel="icon" href="data:,"></head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<div id="page"></div>
<script src="{service}/bundle.js?modules=components/badge&v=2.0.0"></script>
<script src="{service}/bundle.js?modules=components/tag&v=2.0.0"></script>
<script src="{service}/bundle.js?modules=components/photo&v=2.0.0"></script>
<script src="{service}/bundle.js?modules=components/logo&v=2.0.0"></script>
<script>
  var m = window.__bundlerModules;
  document.getElementById("page").innerHTML =
    m["components/badge"].render("new") + " " + m["components/tag"].render("sale") +
    m["components/photo"].render() + m["components/logo"].render();
  var images = [].slice.call(document.querySelectorAll("img"));
  function done() {{
    if (!images.every(function (img) {{ return img.complete; }})) return;
    var note = document.getElementById("bundle-note");
    note.dataset.mode = m[Symbol.for("bundler.bundles")].map(function (b) {{ return b.mode; }}).join(",");
    note.textContent = "badge, tag, photo and logo, " + note.dataset.mode;
  }}
  images.forEach(function (img) {{ img.onload = img.onerror = done; }});
  done();
</script>
</body></html>
"""


@pytest.mark.parametrize("answered", ["tailored", "fallback"])
async def test_components_bring_their_css_and_images_in_the_bundle(
    browser: Browser,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    answered: str,
) -> None:
    """A component's element has the style its CSS gives it, its image loads, and two
    bundles sharing a module's CSS add it once: from tailored bundles, and from the
    version's fallback (a cold cache with a zero budget)."""
    service = await styled_service(aiohttp_server, make_settings, tmp_path, answered)
    site = await page_site(aiohttp_server, STYLED_PAGE.format(service=service))
    page, problems = await open_page(browser, site, f"styled-{answered}")
    assert await page.locator("#bundle-note").get_attribute("data-mode") == ",".join([answered] * 4)
    style = await page.evaluate(
        "(() => { const s = getComputedStyle(document.querySelector('.badge'));"
        " return [s.color, s.fontSize, s.backgroundImage.slice(0, 20)]; })()"
    )
    assert style == [ACCENT, "18px", 'url("data:image/png;']
    assert await page.evaluate("getComputedStyle(document.querySelector('em.tag')).color") == (
        "rgb(0, 100, 0)"
    )
    assert await page.evaluate("document.querySelector('.badge-dot').naturalWidth") == 1
    # tokens.css, badge.css (shared by both bundles: once), tag.css and photo.css.
    keys = await page.evaluate(
        "[...document.querySelectorAll('style[data-bundler-css]')].map(s => s.dataset.bundlerCss)"
    )
    assert len(keys) == 4 and len(set(keys)) == 4
    # The large image: served by its hash, relative to the bundle, and loaded.
    big = (tmp_path / "src" / "2.0.0" / "components" / "big.png").read_bytes()
    url = f"{service}/assets/2.0.0/{hashlib.sha256(big).hexdigest()[:32]}.png"
    background = "getComputedStyle(document.querySelector('.photo')).backgroundImage"
    assert await page.evaluate(background) == f'url("{url}")'
    await page.wait_for_function(f"performance.getEntriesByName({url!r}).length >= 1")
    # The same image imported from JavaScript: its URL also relative to the bundle, loaded.
    assert await page.evaluate("document.querySelector('img.logo').src") == url
    assert await page.evaluate("document.querySelector('img.logo').naturalWidth") == 64
    assert problems == []


async def styled_service(
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    answered: str,
    **overrides: Any,
) -> str:
    """A server of the styled components (version 2.0.0) whose cold misses get the
    ``answered`` kind: "tailored" (they wait for their build) or "fallback" (a zero
    budget, the fallback loaded first); its URL."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    write_styled_version(source / "2.0.0")
    budget = -1 if answered == "tailored" else 0
    app = create_app(make_settings(source=str(source), fallback_budget_ms=budget, **overrides))
    server = await aiohttp_server(app)
    if answered == "fallback":
        assert await app[SERVICE].fallbacks.get("2.0.0") is not None
    return f"http://127.0.0.1:{server.port}"


LINKED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>linked stylesheet</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{service}/bundle.css?modules=components/badge&v=2.0.0">
</head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<div id="page"></div>
<script src="{service}/bundle.js?modules=components/badge&v=2.0.0&css=link"></script>
<script src="{service}/loader.js"></script>
<script>
  var m = window.__bundlerModules;
  document.getElementById("page").innerHTML = m["components/badge"].render("new");
  BundlerLoader.load(["components/tag"], {{ version: "2.0.0", css: "link" }}).then(function (r) {{
    document.getElementById("page").innerHTML += " " + r.modules["components/tag"].render("sale");
    document.getElementById("bundle-note").dataset.mode = "linked-" + r.mode;
  }});
</script>
</body></html>
"""


async def test_a_page_may_link_the_css_and_turn_the_injection_off(
    browser: Browser, aiohttp_server: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """<link rel=stylesheet href=/bundle.css?...> with /bundle.js?...&css=link, and the
    loader's {css: "link"}: the styles apply, and no bundle adds a style element."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    write_styled_version(source / "2.0.0")
    server = await aiohttp_server(create_app(make_settings(source=str(source))))
    service = f"http://127.0.0.1:{server.port}"
    site = await page_site(aiohttp_server, LINKED_PAGE.format(service=service))
    page, problems = await open_page(browser, site, "styled-linked")
    assert await page.locator("#bundle-note").get_attribute("data-mode") == "linked-tailored"
    assert await page.evaluate("getComputedStyle(document.querySelector('.badge')).color") == (
        ACCENT
    )
    assert await page.evaluate("getComputedStyle(document.querySelector('em.tag')).color") == (
        "rgb(0, 100, 0)"
    )
    assert await page.evaluate("document.querySelectorAll('style[data-bundler-css]').length") == 0
    sheets = await page.evaluate(
        "[...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.href.split('?')[0])"
    )
    assert sheets == [f"{service}/bundle.css", f"{service}/bundle.css"]
    assert problems == []


LIT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a lit component from an npm source</title>
<link rel="icon" href="data:,"></head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<acme-hero heading="Hello from lit"></acme-hero>
<script src="{service}/bundle.js?modules=components/hero&v=1.0.0"></script>
<script>
  document.querySelector("acme-hero").updateComplete.then(function () {{
    var note = document.getElementById("bundle-note");
    note.dataset.mode = window.__bundlerModules[Symbol.for("bundler.bundles")]
      .map(function (b) {{ return b.mode; }}).join(",");
    note.textContent = "acme-hero, " + note.dataset.mode;
  }});
</script>
</body></html>
"""


async def test_a_component_library_from_npm_renders_with_its_dependencies(
    browser: Browser,
    aiohttp_server: Any,
    npm_settings: Callable[..., Settings],  # noqa: F811 (the fixture imported above)
) -> None:
    """@acme/components (fixture) depends on lit (real, with its tree), installed by npm
    from the registry on loopback: the custom element renders in its shadow DOM, styled."""
    got = await acme_page(browser, aiohttp_server, npm_settings, LIT_PAGE, "npm-lit-component")
    assert got == ("tailored", ["Hello from lit", "rgb(0, 128, 0)"], [])


async def acme_page(
    browser: Browser,
    aiohttp_server: Any,
    npm_settings: Callable[..., Settings],  # noqa: F811
    html: str,
    name: str,
) -> tuple[str | None, list[str], list[str]]:
    """A page (``html``, {service} filled in) using @acme/components from the npm source:
    its bundle's mode, the acme-hero heading's text and colour (from its shadow DOM), and
    the page's errors."""
    server = await aiohttp_server(create_app(npm_settings(fallback_budget_ms=-1)))
    service = f"http://127.0.0.1:{server.port}"
    site = await page_site(aiohttp_server, html.format(service=service))
    page, problems = await open_page(browser, site, name)
    mode = await page.locator("#bundle-note").get_attribute("data-mode")
    heading: list[str] = await page.evaluate(
        "(() => { const h = document.querySelector('acme-hero').shadowRoot.querySelector('h1');"
        " return [h.textContent, getComputedStyle(h).color]; })()"
    )
    return mode, heading, problems
