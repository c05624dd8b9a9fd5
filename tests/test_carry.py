"""Carry-over, tested differentially: a server that built a version's bundles answers the
next version's, carried where it decides they did not change; a cold server without
carry-over builds the next version fresh. Every answer must be byte-identical (or the
same error). Fixture versions change one thing each; real releases change what they did.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.carry import record as carry_record
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import wait_ready
from tests.packages import npm_tarball
from tests.tarballs import ArtifactServer

BASE = {
    "package.json": json.dumps(
        {
            "name": "fx",
            "version": "1.0.0",
            "sideEffects": ["./lib/side.js"],
            "exports": {"./util": "./lib/util.js", "./package.json": "./package.json"},
            "browser": {"./lib/impl.js": "./lib/impl-browser.js"},
        }
    ),
    "lib/a.js": 'import { dep } from "./dep";\nexport const a = () => "a:" + dep;\n',
    "lib/dep.js": 'export const dep = "dep.js";\n',
    "lib/b.js": 'import { util } from "fx/util";\nexport const b = () => "b:" + util;\n',
    "lib/util.js": 'export const util = "util";\n',
    "lib/other.js": 'export const other = "other";\n',
    "lib/c.js": 'import "./side.js";\nimport "./quiet.js";\nexport const c = 1;\n',
    "lib/side.js": "globalThis.sideRan = true;\n",
    "lib/quiet.js": "globalThis.quietRan = true;\n",
    "lib/d.js": 'import { impl } from "./impl.js";\nexport const d = impl;\n',
    "lib/impl.js": 'export const impl = "node";\n',
    "lib/impl-browser.js": 'export const impl = "browser";\n',
    "lib/e.js": 'import "./e.css";\nexport const e = "e";\n',
    "lib/e.css": ".e { background: url(./img/dot.svg); }\n",
    "lib/img/dot.svg": '<svg xmlns="http://www.w3.org/2000/svg"/>\n',
}


def changed_package(**fields: Any) -> dict[str, str]:
    package = json.loads(BASE["package.json"])
    package.update(fields)
    return {"package.json": json.dumps(package)}


ALL = {"lib/a", "lib/b", "lib/c", "lib/d", "lib/e"}
# version -> (files changed from BASE (None: removed), modules whose bundle must be carried)
VARIANTS: dict[str, tuple[dict[str, str | None], set[str]]] = {
    # Only the version field: every bundle is carried.
    "1.0.1": (changed_package(version="1.0.1"), ALL),
    # A file no bundle here imports: all carried.
    "1.0.2": ({"lib/other.js": 'export const other = "changed";\n'}, ALL),
    # sideEffects: quiet.js is no longer dropped from c (every bundle is rebuilt: the
    # package.json that configures them all changed).
    "1.1.0": (changed_package(sideEffects=True), set()),
    # exports: fx/util points at another file.
    "1.2.0": (
        {**changed_package(exports={"./util": "./lib/other.js"}), "lib/other.js": None},
        set(),
    ),
    # browser: impl.js is no longer swapped.
    "1.3.0": (changed_package(browser={}), set()),
    # dep.ts next to dep.js: "./dep" is dep.ts now (esbuild tries .ts before .js).
    "1.4.0": ({"lib/dep.ts": 'export const dep: string = "dep.ts";\n'}, ALL - {"lib/a"}),
    # dep.mjs next to dep.js: "./dep" is still dep.js (esbuild does not try .mjs), but
    # a's resolution looks at every lib/dep* entry: rebuilt, the same bytes.
    "1.4.1": ({"lib/dep.mjs": 'export const dep = "dep.mjs";\n'}, ALL - {"lib/a"}),
    # dep/index.js next to dep.js: "./dep" is still dep.js (a file before a directory),
    # but a's resolution looks at lib/dep, which is something else now: rebuilt, the same.
    "1.5.0": ({"lib/dep/index.js": 'export const dep = "index";\n'}, ALL - {"lib/a"}),
    # A tsconfig.json whose baseUrl puts fx/util.js (now at the root) before node_modules.
    "1.7.0": (
        {
            "tsconfig.json": json.dumps({"compilerOptions": {"baseUrl": "."}}),
            "fx/util.js": 'export const util = "shadowed";\n',
        },
        set(),
    ),
    # The CSS url() target moved: the CSS no longer builds.
    "1.6.0": (
        {"lib/img/dot.svg": None, "lib/img2/dot.svg": BASE["lib/img/dot.svg"]},
        ALL - {"lib/e"},
    ),
}
COMBOS = [("lib/a",), ("lib/b",), ("lib/c",), ("lib/d",), ("lib/e",), ("lib/a", "lib/c")]


def write_version(root: Path, files: dict[str, str | None]) -> None:
    for name, text in {**BASE, **files}.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    link = root / "node_modules" / "fx"  # as the extraction links a package to itself
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("..", link)


def fixture_source(tmp_path: Path) -> Path:
    source = tmp_path / "fx"
    write_version(source / "1.0.0", {})
    for version, (files, _) in VARIANTS.items():
        write_version(source / version, files)
    return source


async def answer(client: TestClient, modules: tuple[str, ...], version: str) -> tuple[int, bytes]:
    resp = await client.get(f"/bundle.js?modules={','.join(modules)}&v={version}")
    assert resp.headers.get("X-Bundle-Mode", "tailored") == "tailored"
    return resp.status, await resp.read()


def decided(client: TestClient) -> dict[str, int]:
    return dict(client.app[SERVICE].carrier.results)


@pytest.mark.parametrize("decision", ["sound", "naive"])
async def test_fixture_releases_are_carried_only_when_a_build_would_be_the_same(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    decision: str,
) -> None:
    """Each variant changes one thing from 1.0.0. Naive: carried whenever the inputs'
    bytes match, resolution ignored: dep.ts shadowing dep.js is served as dep.js."""
    if decision == "naive":
        monkeypatch.setattr(carry_record, "probe_facts", lambda *args: [])
    source = fixture_source(tmp_path)

    def server(name: str, carry: str) -> Settings:
        return make_settings(
            source=str(source),
            default_version="1.0.0",
            data_dir=str(tmp_path / name),
            carry_over=carry,
            carry_sweep_top=0,
        )

    cold = await aiohttp_client(create_app(server("cold", "off")))
    await wait_ready(cold)
    mismatches = []
    carried_count = 0
    for version, (_, expected) in VARIANTS.items():
        # A server that built 1.0.0 only (it carries from the newest versions it has).
        warm = await aiohttp_client(create_app(server(f"warm-{version}", "on")))
        await wait_ready(warm)
        for modules in COMBOS:
            assert (await answer(warm, modules, "1.0.0"))[0] == 200
        for modules in COMBOS:
            before = decided(warm).get("carried", 0)
            carried = await answer(warm, modules, version)
            was_carried = decided(warm).get("carried", 0) > before
            fresh = await answer(cold, modules, version)
            if carried != fresh:
                mismatches.append((version, modules))
            elif decision == "sound" and len(modules) == 1:
                assert was_carried == (modules[0] in expected), (version, modules)
        carried_count += decided(warm).get("carried", 0)
        await warm.close()
    if decision == "naive":
        assert ("1.4.0", ("lib/a",)) in mismatches
        return
    assert mismatches == []
    assert carried_count >= 25


def unpack(tarball: bytes, into: Path) -> None:
    """An npm tarball's package/ as ``into`` (as the extraction lays a version out)."""
    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith("package/"):
                target = into / member.name.removeprefix("package/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]


def rxjs_source(tmp_path: Path) -> tuple[str, list[str]]:
    """rxjs 7.8.0 and 7.8.1 with tslib installed and the package linked to itself, as a
    directory source (its root tsconfig.json has baseUrl and paths: esbuild reads it)."""
    source = tmp_path / "rxjs"
    for version in ("7.8.0", "7.8.1"):
        unpack(npm_tarball("rxjs", version), source / version)
        unpack(npm_tarball("tslib", "2.9.1"), source / version / "node_modules" / "tslib")
        os.symlink("..", source / version / "node_modules" / "rxjs")
    internal = source / "7.8.0" / "dist" / "esm5" / "internal"
    names = sorted(
        str(p.relative_to(source / "7.8.0")).removesuffix(".js")
        for folder in ("operators", "observable")
        for p in (internal / folder).glob("[a-z]*.js")
    )
    return str(source), names


@pytest.mark.parametrize(
    ("package", "old", "new"), [("lodash-es", "4.17.20", "4.17.21"), ("rxjs", "7.8.0", "7.8.1")]
)
async def test_a_real_release_carried_is_byte_identical_to_a_fresh_build(
    aiohttp_client: Any,
    aiohttp_server: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    package: str,
    old: str,
    new: str,
) -> None:
    """A few hundred combinations of a real release pair (popular functions, a bare
    package name, combinations that import a changed file): each carried answer is the
    bytes of a fresh build on a cold server, or it was rebuilt. rxjs has a root
    tsconfig.json with baseUrl and paths, and its modules import tslib by name."""
    if package == "rxjs":
        source, names = rxjs_source(tmp_path)
    else:
        artifacts = ArtifactServer()
        for version in (old, new):
            artifacts.publish(version, npm_tarball(package, version))
        served = await aiohttp_server(artifacts.app())
        artifacts.url = f"http://127.0.0.1:{served.port}"
        source, names = artifacts.template, []

    def server(name: str, carry: str, default: str) -> Settings:
        return make_settings(
            source=source,
            default_version=default,
            data_dir=str(tmp_path / name),
            carry_over=carry,
            carry_sweep_top=0,
            fallback_budget_ms=-1,
        )

    warm = await aiohttp_client(create_app(server("warm", "on", old)))
    cold = await aiohttp_client(create_app(server("cold", "off", new)))
    await wait_ready(warm, timeout_s=60)
    await wait_ready(cold, timeout_s=60)
    if not names:
        listed = json.loads(await (await warm.get(f"/fallback.json?v={old}")).read())["names"]
        names = sorted(n for n in listed if not n.endswith(".js") and "/" not in n.strip("/"))
    rng = random.Random(29)
    combos = [] if package == "rxjs" else [(package,)]
    combos += [tuple(sorted(rng.sample(names, rng.randint(1, 8)))) for _ in range(200)]
    combos = list(dict.fromkeys(combos))
    for modules in combos:
        assert (await answer(warm, modules, old))[0] == 200
    mismatches = []
    for modules in combos:
        if await answer(warm, modules, new) != await answer(cold, modules, new):
            mismatches.append(modules)
    results = decided(warm)
    print(f"{package} {old} -> {new}: {len(combos)} combinations, {results}")
    assert mismatches == [], mismatches[:3]
    assert results.get("carried", 0) > len(combos) / 4, results
    assert sum(n for k, n in results.items() if k.startswith("rebuilt:changed")) > 0, results
    shutil.rmtree(tmp_path / "warm", ignore_errors=True)


@pytest.mark.parametrize("prefetch", ["on", "off"])
async def test_a_new_version_listed_is_pulled_and_carried_before_pages_ask(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path, prefetch: str
) -> None:
    """--prefetch-new-versions: 1.0.1 appears in the source while 1.0.0 is served; its
    popular bundles are carried over with no request for it, and its first pages are
    memory hits. Off (as before): nothing happens until a page asks."""
    source = tmp_path / "fx"
    write_version(source / "1.0.0", {})
    settings = make_settings(
        source=str(source),
        default_version="1.0.0",
        data_dir=str(tmp_path / "data"),
        prefetch_new_versions=prefetch,
        prefetch_interval_s=0.1,
    )
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    for modules in COMBOS:
        assert (await answer(client, modules, "1.0.0"))[0] == 200
    write_version(source / "1.0.1", changed_package(version="1.0.1"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (10 if prefetch == "on" else 1)
    while decided(client).get("carried", 0) < len(COMBOS) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if prefetch == "off":
        assert decided(client).get("carried", 0) == 0
        return
    assert decided(client)["carried"] == len(COMBOS)
    service = client.app[SERVICE]
    await service.tiers.flush()
    hits = service.tiers.lookups["memory_hit"]
    for modules in COMBOS:
        assert (await answer(client, modules, "1.0.1"))[0] == 200
    assert service.tiers.lookups["memory_hit"] == hits + len(COMBOS)


async def test_an_answer_carried_over_says_so_and_is_counted_apart(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A page whose miss is answered with a carried bundle: Cache-Status says carried,
    bundler_requests_total counts mode="carried" (the status page's answers); a bundle
    the release changed is "built"; the next request for either is a hit."""
    source = tmp_path / "fx"
    write_version(source / "1.0.0", {})
    write_version(source / "1.1.0", changed_package(sideEffects=True))  # every bundle rebuilt
    write_version(source / "1.0.1", changed_package(version="1.0.1"))  # every bundle carried
    settings = make_settings(
        source=str(source), default_version="1.0.0", carry_over="on", carry_sweep_top=0
    )
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    statuses = []
    for version in ("1.0.0", "1.0.0", "1.0.1", "1.0.1", "1.1.0"):
        resp = await client.get(f"/bundle.js?modules=lib/a&v={version}")
        assert resp.status == 200
        statuses.append(resp.headers["Cache-Status"])
    assert statuses == [
        "bundler; fwd=miss; stored",  # 1.0.0, built
        "bundler; hit",
        "bundler; fwd=miss; stored; detail=carried",  # 1.0.1, carried from 1.0.0
        "bundler; hit",
        "bundler; fwd=miss; stored",  # 1.1.0 changed what lib/a's bundle reads: built
    ]
    requests = client.app[SERVICE].requests
    assert (requests["built"], requests["carried"], requests["hit"]) == (2, 1, 2)
