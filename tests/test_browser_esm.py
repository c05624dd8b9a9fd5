"""Module pages in real headless Chromium: <script type="module"> importing /bundle.mjs
with string export names from another origin, tailored and from the fallback; the demo
page through loader.mjs; real packages from npm (lodash-es, and lit with its tree).

Chromium comes from Debian, as for tests/test_browser.py (skipped loudly without it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.tarballs import npm_package_source
from tests.test_browser import (  # noqa: F401 (the browser fixture)
    acme_page,
    assert_components_styled,
    browser,
    open_page,
    page_site,
    styled_service,
)
from tests.test_css import ACCENT
from tests.test_npm import npm_settings, registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

MODULE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a module page</title>
<link rel="icon" href="data:,"></head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<div id="page"></div>
<script type="module">
  import {{ "components/badge" as badge, "components/photo" as photo, "bundler:bundle" as info }}
    from "{service}/bundle.mjs?modules=components/badge,components/photo&v=2.0.0";
  document.getElementById("page").innerHTML = badge.render("new") + photo.render();
  const note = document.getElementById("bundle-note");
  note.dataset.mode = info.mode;
  note.textContent = "badge and photo, " + info.mode;
</script>
<script>
  // A module that fails to load runs nothing: say so, for the test to see.
  window.addEventListener("error", function (e) {{
    var note = document.getElementById("bundle-note");
    if (note.dataset.mode === "loading") {{ note.dataset.mode = "error"; }}
  }}, true);
  setTimeout(function () {{
    var note = document.getElementById("bundle-note");
    if (note.dataset.mode === "loading") note.dataset.mode = "error";
  }}, 8000);
</script>
</body></html>
"""


@pytest.mark.parametrize(
    ("answered", "cors"),
    [("tailored", "*"), ("fallback", "*"), ("tailored", "")],
    ids=["tailored", "fallback", "no-cors"],
)
async def test_a_module_page_on_another_origin_imports_its_modules_by_name(
    browser: Browser,  # noqa: F811 (the fixture imported above)
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    answered: str,
    cors: str,
) -> None:
    """The same import statement renders the same styled components from the tailored
    module and from the version's fallback as a module; the large image the CSS names is
    found relative to the module (import.meta.url). Without CORS headers (the control)
    the browser refuses the module from another origin and nothing renders."""
    service = await styled_service(
        aiohttp_server, make_settings, tmp_path, answered, cors_origins=cors
    )
    site = await page_site(aiohttp_server, MODULE_PAGE.format(service=service))
    page, problems = await open_page(
        browser, site, f"module-{answered}-{'cors' if cors else 'no-cors'}"
    )
    mode = await page.locator("#bundle-note").get_attribute("data-mode")
    if not cors:
        assert mode == "error"
        assert any("CORS" in problem for problem in problems), problems
        return
    assert mode == answered
    style = await page.evaluate(
        "(() => { const s = getComputedStyle(document.querySelector('.badge'));"
        " return [s.color, s.fontSize]; })()"
    )
    assert style == [ACCENT, "18px"]
    background = "getComputedStyle(document.querySelector('.photo')).backgroundImage"
    assert (await page.evaluate(background)).startswith(f'url("{service}/assets/2.0.0/')
    registered = await page.evaluate("typeof window.__bundlerModules")
    # The tailored module registers nothing; the fallback is the classic one plus exports.
    assert registered == ("undefined" if answered == "tailored" else "object")
    assert problems == []


@pytest.mark.parametrize("budget", [-1, 0], ids=["tailored", "fallback"])
async def test_the_demo_page_loads_the_module_form_through_loader_mjs(
    browser: Browser,  # noqa: F811
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    budget: int,
) -> None:
    app = create_app(make_settings(fallback_budget_ms=budget))
    server = await aiohttp_server(app)
    if budget == 0:
        assert await app[SERVICE].fallbacks.get("1.1.0") is not None
    base = f"http://127.0.0.1:{server.port}"
    name = "demo-module-" + ("tailored" if budget else "fallback")
    page, problems = await open_page(browser, base + "/?format=esm", name)
    note = page.locator("#bundle-note")
    expected = "tailored" if budget else "fallback"
    assert await note.get_attribute("data-mode") == expected
    assert f"from a {expected} module" in await note.inner_text()
    assert "KB" in await note.inner_text()  # its size, from Resource Timing
    assert await page.locator(".hero h1").inner_text() == "Spring sale"
    assert "€39.20" in await page.locator(".price").inner_text()
    await assert_components_styled(page)
    urls = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/bundle.mjs?modules=" in url for url in urls)
    assert not any("/bundle.js?" in url for url in urls)
    assert problems == []


LODASH_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lodash-es as a module</title>
<link rel="icon" href="data:,"></head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<script type="module">
  import {{ "chunk" as chunk, "kebabCase" as kebab, "bundler:bundle" as info }}
    from "{service}/bundle.mjs?modules=chunk,kebabCase&v=4.17.21";
  const note = document.getElementById("bundle-note");
  note.textContent = JSON.stringify(chunk.default([1, 2, 3, 4, 5], 2)) + " " + kebab.default("Module Pages");
  note.dataset.mode = info.mode;
</script>
</body></html>
"""


async def test_lodash_es_from_its_npm_tarball_is_used_from_a_module_page(
    browser: Browser,  # noqa: F811
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
) -> None:
    source = await npm_package_source(aiohttp_server, "lodash-es", "4.17.21")
    settings = make_settings(source=source, default_version="4.17.21", fallback_budget_ms=-1)
    server = await aiohttp_server(create_app(settings))
    service = f"http://127.0.0.1:{server.port}"
    site = await page_site(aiohttp_server, LODASH_PAGE.format(service=service))
    page, problems = await open_page(browser, site, "module-lodash-es")
    note = page.locator("#bundle-note")
    assert await note.get_attribute("data-mode") == "tailored"
    assert await note.inner_text() == "[[1,2],[3,4],[5]] module-pages"
    assert problems == []


LIT_MODULE_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a lit component as a module</title>
<link rel="icon" href="data:,"></head>
<body>
<p id="bundle-note" data-mode="loading">loading</p>
<acme-hero heading="Hello from a module"></acme-hero>
<script type="module">
  import {{ "bundler:bundle" as info }} from "{service}/bundle.mjs?modules=components/hero&v=1.0.0";
  await document.querySelector("acme-hero").updateComplete;
  const note = document.getElementById("bundle-note");
  note.dataset.mode = info.mode;
  note.textContent = "acme-hero, " + info.mode;
</script>
</body></html>
"""


async def test_a_component_library_from_npm_renders_from_a_module_page(
    browser: Browser,  # noqa: F811
    aiohttp_server: Any,
    npm_settings: Callable[..., Settings],  # noqa: F811
) -> None:
    """@acme/components (fixture) on lit (real, with its tree, installed by npm from the
    registry on loopback), imported by a module page: the element renders, styled."""
    got = await acme_page(browser, aiohttp_server, npm_settings, LIT_MODULE_PAGE, "module-npm-lit")
    assert got == ("tailored", ["Hello from a module", "rgb(0, 128, 0)"], [])
