"""npm sources (--source npm:NAME): the real npm client installs a version with its
dependencies from a static registry on loopback, filled with real packages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import run_in_node
from tests.registry import StaticRegistry
from tests.tarballs import make_tarball

LIB = "@acme/components"
LIT = ("lit", "3.2.1")
D3_SCALE = ("d3-scale", "4.0.2")
PREACT = ("preact", "10.24.3")


def marker_script(marker: Path) -> str:
    return f"node -e \"require('fs').writeFileSync({json.dumps(str(marker))}, 'ran')\""


def library(version: str, markers: Path, **extra: Any) -> bytes:
    """The fixture component library: components that import real packages."""
    package = {
        "name": LIB,
        "version": version,
        "type": "module",
        "exports": {".": "./index.js", "./components/*": "./components/*.js"},
        "dependencies": {"lit": "^3.2.1", "d3-scale": "^4.0.2", "@acme/evil-dep": "1.0.0"},
        "devDependencies": {"left-pad": "1.3.0"},
        "scripts": {
            name: marker_script(markers / f"lib-{name}")
            for name in ("preinstall", "install", "postinstall", "prepare")
        },
        **extra,
    }
    return make_tarball(
        {
            "package.json": json.dumps(package).encode(),
            "index.js": b'export { scale } from "./components/scale.js";\nexport const name = "acme";\n',
            "components/scale.js": (
                b'import { scaleLinear } from "d3-scale";\n'
                b"export function scale(x) { return scaleLinear().domain([0, 10]).range([0, 100])(x); }\n"
            ),
            "components/hero.js": (
                b'import { LitElement, html, css } from "lit";\n'
                b"export class AcmeHero extends LitElement {\n"
                b"  static properties = { heading: {} };\n"
                b"  static styles = css`h1 { color: rgb(0, 128, 0); }`;\n"
                b"  render() { return html`<h1>${this.heading}</h1>`; }\n"
                b"}\n"
                b'if (!customElements.get("acme-hero")) customElements.define("acme-hero", AcmeHero);\n'
            ),
            "components/self.js": b'import { name } from "@acme/components";\nexport const me = name + "!";\n',
            "components/pad.js": b'import leftPad from "left-pad";\nexport const pad = leftPad;\n',
        }
    )


def evil_dependency(markers: Path) -> bytes:
    package = {
        "name": "@acme/evil-dep",
        "version": "1.0.0",
        "main": "index.js",
        "scripts": {"postinstall": marker_script(markers / "dep-postinstall")},
    }
    return make_tarball(
        {"package.json": json.dumps(package).encode(), "index.js": b"export const evil = 1;\n"}
    )


@pytest.fixture
async def registry(tmp_path: Path, aiohttp_server: Any) -> StaticRegistry:
    registry = StaticRegistry(tmp_path / "registry")
    for name, version in (LIT, D3_SCALE, PREACT):
        registry.publish_real(name, version)
    markers = tmp_path / "markers"
    markers.mkdir()
    registry.publish(evil_dependency(markers))
    registry.publish(library("1.0.0", markers))
    registry.publish(library("1.1.0", markers))
    server = await aiohttp_server(registry.app())
    registry.url = str(server.make_url("")).rstrip("/")
    return registry


@pytest.fixture
def npm_settings(
    make_settings: Callable[..., Settings], registry: StaticRegistry
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {
            "source": f"npm:{LIB}",
            "npm_registry": registry.url,
            "default_version": "1.0.0",
            **overrides,
        }
        return make_settings(**values)

    return make


async def npm_client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))


async def test_a_library_with_dependencies_bundles_and_runs(
    aiohttp_client: Any, npm_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/bundle.js?modules=components/scale,index&v=1.0.0")
    body = await resp.text()
    assert resp.status == 200, body
    result = run_in_node(
        tmp_path,
        body.encode(),
        "[globalThis.__bundlerModules['components/scale'].scale(5), "
        "globalThis.__bundlerModules['index'].name]",
    )
    assert result == [50, "acme"]
