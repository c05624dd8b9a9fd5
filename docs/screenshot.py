"""Makes docs/demo.png: the demo page (GET /) in headless Chromium, served by a fresh
service on the example components (`make screenshot`)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from aiohttp import web
from playwright.async_api import async_playwright

from bundler.app import create_app
from bundler.settings import Settings

OUT = Path(__file__).resolve().parent / "demo.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


async def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshot: Debian's chromium is needed (make browser installs it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as data:
        runner = web.AppRunner(create_app(Settings(data_dir=data)))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=chromium, headless=True, args=CHROMIUM_ARGS
                )
                page = await browser.new_page(viewport={"width": 1000, "height": 760})
                # Twice: the first visit builds the bundle (it may get the fallback).
                for _ in range(2):
                    await page.goto(f"http://127.0.0.1:{port}/")
                    await page.wait_for_function(
                        "document.getElementById('bundle-note').dataset.mode !== 'loading'"
                    )
                await page.screenshot(path=str(OUT), full_page=True)
                await browser.close()
        finally:
            await runner.cleanup()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
