"""npm sources (--source npm:NAME): the real npm client installs a version with its
dependencies from a static registry on loopback, filled with real packages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from bundler import extract, npm, npm_source, source_config
from bundler.app import create_app
from bundler.settings import Settings
from tests.conftest import (
    ROOT,
    free_port,
    run_in_node,
    start_service,
    wait_process_ready,
    wait_ready,
)
from tests.packages import npm_tarball
from tests.registry import StaticRegistry
from tests.tarballs import ArtifactServer, make_tarball

LIB = "@acme/components"
LIT = ("lit", "3.2.1")
D3_SCALE = ("d3-scale", "4.0.2")
PREACT = ("preact", "10.24.3")
VUE = ("vue", "3.5.45")


def marker_script(marker: Path) -> str:
    return f"node -e \"require('fs').writeFileSync(process.argv[1], 'ran')\" {marker}"


def library(version: str, markers: Path, **extra: Any) -> bytes:
    """The fixture component library: components that import real packages."""
    package = {
        "name": LIB,
        "version": version,
        "type": "module",
        "exports": {".": "./index.js", "./components/*": "./components/*.js"},
        # The Node build of a module, swapped for its browser build where a browser loads it.
        "browser": {"./components/encode.js": "./components/encode-browser.js"},
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
            "components/encode.js": (
                b'export const encode = (s) => Buffer.from(s).toString("base64");\n'
            ),
            "components/encode-browser.js": b"export const encode = (s) => btoa(s);\n",
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
    registry.markers = markers  # type: ignore[attr-defined]
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


async def test_install_scripts_never_run(
    aiohttp_client: Any, npm_settings: Callable[..., Settings], registry: StaticRegistry
) -> None:
    markers: Path = registry.markers  # type: ignore[attr-defined]
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/bundle.js?modules=index&v=1.0.0")
    assert resp.status == 200, await resp.text()
    assert list(markers.iterdir()) == []


async def test_the_naive_install_would_run_them(
    npm_settings: Callable[..., Settings],
    registry: StaticRegistry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Control: the same install without --ignore-scripts runs the package's own scripts
    and its dependency's."""
    markers: Path = registry.markers  # type: ignore[attr-defined]
    flags = tuple(f for f in npm.COMMON_FLAGS if f != "--ignore-scripts")
    monkeypatch.setattr(npm, "COMMON_FLAGS", flags)
    monkeypatch.setattr(
        npm, "_production_part", lambda m: {k: v for k, v in m.items() if k != "devDependencies"}
    )
    source = source_config.open_source(npm_settings())
    assert isinstance(source, npm_source.NpmSource)
    await source.start()
    try:
        await source.checkout("1.0.0")
    finally:
        await source.close()
    assert {p.name for p in markers.iterdir()} >= {"lib-preinstall", "dep-postinstall"}


async def test_a_module_importing_itself_by_name_bundles(
    aiohttp_client: Any, npm_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/bundle.js?modules=components/self&v=1.0.0")
    body = await resp.text()
    assert resp.status == 200, body
    assert run_in_node(tmp_path, body.encode(), "__bundlerModules['components/self'].me") == "acme!"


@pytest.mark.parametrize("linked", [True, False])
async def test_a_tarball_source_resolves_a_package_importing_itself(
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    linked: bool,
) -> None:
    """preact/compat imports "preact" and "preact/hooks": its own package, by name, from a
    folder with a package.json of its own (so esbuild's self-reference does not reach it).
    Control (linked=False): without the version's node_modules/preact link, as before."""
    if not linked:
        monkeypatch.setattr(extract, "link_self", lambda root: None)
    artifacts = ArtifactServer()
    artifacts.publish("10.24.3", npm_tarball(*PREACT))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    settings = make_settings(source=artifacts.template, default_version="10.24.3")
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/bundle.js?modules=compat/dist/compat.module.js")
    body = await resp.text()
    if not linked:
        assert resp.status == 422, body
        return
    assert resp.status == 200, body
    check = "typeof __bundlerModules['compat/dist/compat.module.js'].useState"
    assert run_in_node(tmp_path, body.encode(), check) == "function"
    # A folder with its own package.json is a module, as esbuild resolves "./compat":
    # its package.json's module field (it was a 404).
    resp = await client.get("/bundle.js?modules=compat")
    body = await resp.text()
    assert resp.status == 200, body
    check = "typeof __bundlerModules['compat'].useState"
    assert run_in_node(tmp_path, body.encode(), check) == "function"
    # ...and a page may name what preact publishes.
    resp = await client.get("/bundle.js?modules=preact,preact/hooks,preact/compat")
    body = await resp.text()
    assert resp.status == 200, body
    check = "['preact', 'preact/hooks', 'preact/compat'].map(n => typeof __bundlerModules[n].createElement + typeof __bundlerModules[n].useState)"
    assert run_in_node(tmp_path, body.encode(), check) == [
        "functionundefined",
        "undefinedfunction",
        "functionfunction",
    ]


async def test_pages_may_ask_for_the_published_names(
    aiohttp_client: Any, npm_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    names = f"{LIB},{LIB}/components/scale"
    resp = await client.get(f"/bundle.js?modules={names}&v=1.0.0")
    body = await resp.text()
    assert resp.status == 200, body
    check = f"[__bundlerModules['{LIB}'].name, __bundlerModules['{LIB}/components/scale'].scale(1)]"
    assert run_in_node(tmp_path, body.encode(), check) == ["acme", 10]
    resp = await client.get(f"/bundle.js?modules={LIB}/nothing-here&v=1.0.0")
    text = await resp.text()
    assert resp.status == 404, text
    assert f"{LIB} publishes {LIB}, {LIB}/components/*" in text


async def test_the_browser_field_swaps_a_module_for_its_browser_build(
    aiohttp_client: Any, npm_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/bundle.js?modules=components/encode&v=1.0.0")
    body = await resp.text()
    assert resp.status == 200, body
    # The V8 context has btoa (as browsers do) and no Buffer (as browsers do not).
    check = "__bundlerModules['components/encode'].encode('hi')"
    assert (
        run_in_node(tmp_path, body.encode(), check, setup="globalThis.btoa = (s) => 'aGk='")
        == "aGk="
    )


async def test_a_missing_dependency_is_a_422_that_says_so(
    aiohttp_client: Any, npm_settings: Callable[..., Settings]
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/bundle.js?modules=components/pad&v=1.0.0")
    text = await resp.text()
    assert resp.status == 422, text
    assert "components/pad.js imports 'left-pad'" in text
    assert '"dependencies"' in text
    assert "external" not in text  # not esbuild's advice, which a page cannot act on
    assert "/" + "tmp" not in text and str(Path.home()) not in text


async def test_versions_lists_what_the_registry_offers(
    aiohttp_client: Any, npm_settings: Callable[..., Settings]
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    resp = await client.get("/versions")
    assert resp.status == 200
    assert await resp.json() == {"default": "1.0.0", "versions": ["1.0.0", "1.1.0"]}
    resp = await client.get("/bundle.js?modules=index&v=9.9.9")
    assert resp.status == 404, await resp.text()


async def test_fifty_concurrent_cold_requests_install_once(
    aiohttp_client: Any,
    npm_settings: Callable[..., Settings],
    registry: StaticRegistry,
) -> None:
    client = await npm_client(aiohttp_client, npm_settings())
    await wait_ready(client)  # the default version (1.0.0) is installed: 1.1.0 is cold
    names = ["index", "components/scale", "components/self", "components/encode"]
    resps = await asyncio.gather(
        *(client.get(f"/bundle.js?modules={names[i % 4]}&v=1.1.0") for i in range(50))
    )
    assert [r.status for r in resps] == [200] * 50
    assert registry.hits["-/acme-components-1.1.0.tgz"] == 1
    pulls = await (await client.get("/metrics")).text()
    assert 'bundler_source_pulls_total{result="ok"} 2.0' in pulls  # 1.0.0 (default), 1.1.0


@pytest.mark.parametrize("watched", [True, False], ids=["watched", "finished-between-looks"])
async def test_an_install_over_the_caps_is_refused_and_leaves_nothing(
    aiohttp_client: Any,
    npm_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watched: bool,
) -> None:
    """Refused whether the watch sees the tree grow past the caps while npm writes it, or
    npm finishes before the watch looks (then the check after the install refuses it)."""
    if not watched:
        monkeypatch.setattr(npm, "WATCH_INTERVAL_S", 3600)
    client = await npm_client(
        aiohttp_client, npm_settings(extract_max_members=60, default_version="1.1.0")
    )
    resp = await client.get("/bundle.js?modules=index&v=1.1.0")
    text = await resp.text()
    assert resp.status == 503, text
    assert "more than 60 files" in text
    assert leftovers(tmp_path / "data" / "sources") == []


async def test_an_install_past_its_deadline_is_refused_and_leaves_nothing(
    aiohttp_client: Any,
    npm_settings: Callable[..., Settings],
    registry: StaticRegistry,
    tmp_path: Path,
) -> None:
    released = registry.hold("lit-3.2.1.tgz")
    client = await npm_client(
        aiohttp_client, npm_settings(source_download_timeout_s=3, default_version="1.1.0")
    )
    try:
        resp = await client.get("/bundle.js?modules=index&v=1.1.0")
        text = await resp.text()
    finally:
        released.set()
    assert resp.status == 503, text
    assert "took longer than" in text
    assert leftovers(tmp_path / "data" / "sources") == []


def leftovers(sources_dir: Path) -> list[str]:
    """What is under the sources dir besides installed versions and the lock."""
    if not sources_dir.exists():
        return []
    return sorted(
        p.name
        for p in sources_dir.iterdir()
        if p.name != ".lock" and not (p / extract.COMPLETE).exists()
    )


@pytest.mark.slow
async def test_kill_9_during_an_install_then_restart(
    registry: StaticRegistry, tmp_path: Path
) -> None:
    """The service dies while npm installs (held at the lit tarball); npm dies with it, and
    the next start removes the unfinished install and installs again."""
    released = registry.hold("lit-3.2.1.tgz")
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        return start_service(
            port, log, "--data-dir", str(data), "--source", f"npm:{LIB}",
            "--npm-registry", registry.url, "--default-version", "1.0.0", "--drain-s", "0",
        )  # fmt: skip

    first = start()
    try:
        async with asyncio.timeout(60):
            while registry.hits["-/lit-3.2.1.tgz"] == 0:
                assert first.poll() is None, log.read_text()
                await asyncio.sleep(0.02)
        npm_pids = children_of(first.pid)
        assert npm_pids, "npm should be running"
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=10)
    async with asyncio.timeout(10):  # npm is killed with the service (PR_SET_PDEATHSIG)
        while any(Path(f"/proc/{pid}").exists() for pid in npm_pids):
            await asyncio.sleep(0.02)
    assert leftovers(data / "sources"), "the kill should leave the unfinished install behind"
    released.set()

    second = start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            await wait_process_ready(session, url, timeout_s=60)
            async with session.get(url + "/bundle.js?modules=components/scale") as resp:
                assert resp.status == 200, await resp.text()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    assert leftovers(data / "sources") == []


def children_of(pid: int) -> list[int]:
    """The process's direct children (npm, started in its own session)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(status.parent.name))
    return found


async def test_the_version_digest_covers_the_installed_dependencies(
    npm_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Two installs of one version with different dependency trees have different digests
    (a stored fallback of one is never taken for the other)."""
    source = source_config.open_source(npm_settings())
    assert isinstance(source, npm_source.NpmSource)
    await source.start()
    try:
        root = await source.checkout("1.0.0")
        first = extract.read_facts(root)
        lock = root / "node_modules" / ".package-lock.json"
        assert first is not None and lock.exists()
        lock.write_text(lock.read_text().replace('"3.2.1"', '"3.2.0"'))
        facts_file = root.parent / extract.FACTS
        facts_file.write_text(json.dumps({**first, "digest": "d"}))
        extract.fold_into_digest(root, lock)
        changed = extract.read_facts(root)
        facts_file.write_text(json.dumps({**first, "digest": "d"}))
        lock.write_text(lock.read_text().replace('"3.2.0"', '"3.2.1"'))
        extract.fold_into_digest(root, lock)
        same = extract.read_facts(root)
    finally:
        await source.close()
    assert changed is not None and same is not None
    assert changed["digest"] != same["digest"]


async def test_offline_warm_of_an_npm_version_then_the_service_answers_without_building(
    aiohttp_client: Any,
    npm_settings: Callable[..., Settings],
    registry: StaticRegistry,
    counting_esbuild: tuple[str, Callable[[], int]],
    tmp_path: Path,
) -> None:
    """The release runbook on an npm source: `bundler warm --version NEW` installs NEW once,
    builds its fallback and the listed bundles into the data dir; the service then answers
    them from disk, with no esbuild run and no second install."""
    combos = tmp_path / "combos.txt"
    combos.write_text("index,components/scale\ncomponents/self\ncomponents/encode\n")
    data = tmp_path / "data"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "bundler", "warm", "--version", "1.1.0",
            "--input", str(combos), "--data-dir", str(data),
            "--source", f"npm:{LIB}", "--npm-registry", registry.url,
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3 built" in result.stdout, result.stdout
    assert "fallback" in result.stderr + result.stdout
    wrapper, runs = counting_esbuild
    client = await npm_client(
        aiohttp_client, npm_settings(esbuild=wrapper, default_version="1.1.0")
    )
    await wait_ready(client)
    for line in combos.read_text().split():
        resp = await client.get(f"/bundle.js?modules={line}&v=1.1.0")
        assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    assert runs() == 0
    assert registry.hits["-/acme-components-1.1.0.tgz"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("survey", ["service", "naive"])
async def test_vue_as_a_tarball_gets_a_fallback_of_its_browser_builds(
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    survey: str,
) -> None:
    """vue's own tarball, without its @vue/* dependencies: most of its files do not build,
    its browser builds do. Its "vue" (published through its link to itself) reaches a file
    that does not build by a second path. Naive (that path not left out as well): the
    survey could not go on, and the version never had a fallback."""
    if survey == "naive":
        monkeypatch.setattr("bundler.survey.self_link", lambda root: None)
    artifacts = ArtifactServer()
    artifacts.publish(VUE[1], npm_tarball(*VUE))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    settings = make_settings(source=artifacts.template, default_version=VUE[1])
    client = await aiohttp_client(create_app(settings))
    if survey == "naive":
        await asyncio.sleep(3)
        resp = await client.get("/readyz")
        assert resp.status == 503, await resp.text()
        return
    await wait_ready(client, timeout_s=20)
    info = await (await client.get(f"/fallback.json?v={VUE[1]}")).json()
    assert any(name.startswith("dist/vue.") and "esm-browser" in name for name in info["names"])
    why = info["left_out"]
    assert why["dist/vue.runtime.esm-bundler.js"] == (
        'does_not_build: Could not resolve "@vue/runtime-dom"'
    )
    assert all(reason.split(":")[0] for reason in why.values())  # each says why
    resp = await client.get(f"/bundle.js?modules=dist/vue.runtime.esm-browser.prod&v={VUE[1]}")
    assert resp.status == 200
