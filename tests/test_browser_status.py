"""The status page in real headless Chromium, on a server that has just gone through a
small release: lodash-es 4.17.20 warm, then a few hundred requests for 4.17.21 (its npm
tarballs, from a loopback artifact server), pulled, its fallback built, bundles carried.
Every panel must be drawn with data. The screenshot is docs/status.png's source.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Browser

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import wait_ready
from tests.tarballs import npm_package_source
from tests.test_browser import ARTIFACTS, browser  # noqa: F401 (the browser fixture)

pytestmark = pytest.mark.slow

PANELS = ("answers", "share", "ttfb", "builds", "esbuild", "lag", "tiers")
NAMES = ["chunk", "debounce", "get", "groupBy", "kebabCase", "merge", "pick", "sortBy", "uniq", "zip"]  # fmt: skip


async def test_the_status_page_draws_every_panel_after_a_release(
    browser: Browser,  # noqa: F811 (the fixture imported above)
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
) -> None:
    source = await npm_package_source(aiohttp_server, "lodash-es", "4.17.20", "4.17.21")
    settings = make_settings(source=source, default_version="4.17.20", fallback_budget_ms=150)
    server = await aiohttp_server(create_app(settings))
    client = await aiohttp_client(server)
    await wait_ready(client, timeout_s=60)
    rng = random.Random(32)
    combos = [",".join(sorted(rng.sample(NAMES, rng.randint(1, 4)))) for _ in range(40)]
    for version, rounds in (("4.17.20", 3), ("4.17.21", 5)):  # the release: a cold version
        for _ in range(rounds):
            answers = await asyncio.gather(
                *(client.get(f"/bundle.js?modules={c}&v={version}") for c in combos)
            )
            assert {a.status for a in answers} == {200}
            await asyncio.sleep(0.5)
    await asyncio.sleep(4.5)  # the board samples every 2 s

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{server.port}/status")
    await page.wait_for_function("document.body.dataset.drawn === 'yes'", timeout=15_000)
    for name in PANELS:
        points = await page.evaluate(
            f"[...document.querySelectorAll('[data-panel=\"{name}\"] polyline')]"
            ".map(p => p.getAttribute('points').split(' ').length)"
        )
        assert points and max(points) >= 3, (name, points)
        legend = await page.locator(f'[data-panel="{name}"] .legend').inner_text()
        assert legend.strip(), name
    answered = await page.evaluate(
        "[...document.querySelectorAll('[data-panel=\"answers\"] polyline')]"
        ".map(p => p.dataset.series)"
    )
    assert {"hit", "built"} <= set(answered)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "status-release.png"), full_page=True)
    release = await page.locator("table.versions tr", has_text="4.17.21").inner_text()
    cells = release.split("\t")
    assert cells[1] == "yes" and cells[2].endswith(" s")  # pulled, and how long it took
    assert cells[4].endswith("KB") and cells[7] != "0 / 0"  # its fallback, carry-over decided
    assert problems == []
