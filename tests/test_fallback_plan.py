"""What goes into a fallback: real packages' awkward files, the byte budget, the ranking.

Each failure class a real tarball showed (a helper importing an unshipped file,
declaration files, Node-only scripts, top-level await, .scss imports, missing
dependencies) is reproduced by a fixture version; the naive every-file fallback
is built from the same fixture to show it fails the same check.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob
from bundler.errors import BuildFailed, ConfigError
from bundler.fallback import build as fallback_build
from bundler.fallback.candidates import (
    entry_point_paths,
    list_candidates,
    list_registrations,
    node_only_paths,
)
from bundler.fallback.model import Fallback, Plan
from bundler.fallback.ranking import OperatorList, Survey, rank, select
from bundler.keys import SERVICE
from bundler.settings import Settings
from bundler.spec import BuildOptions
from tests.conftest import run_in_node, wait_ready
from tests.packages import npm_tarball
from tests.registry import StaticRegistry
from tests.tarballs import ArtifactServer

OPTIONS = BuildOptions(target="es2018", registry_name="__bundlerModules")

# One version holding every kind of file that broke the every-file fallback of a real package.
AWKWARD = {
    "package.json": json.dumps(
        {
            "name": "awkward",
            "type": "module",
            "module": "index.js",
            "bin": {"awk": "./bin/cli.js"},
            "browser": {"./lib/server.js": False},
        }
    ),
    "index.js": 'export { add } from "./math/add.js";\nexport { greet } from "./greet.js";\n',
    "greet.js": 'export const greet = (n) => "hi " + n;\n',
    "math/add.js": "export const add = (a, b) => a + b;\n",
    "math/mul.js": "export const mul = (a, b) => a * b;\n",
    # a development helper importing a file the package does not ship
    "_lib/test.js": 'import { setup } from "./test/vitest";\nexport const t = setup;\n',
    # ...and a module that imports that helper
    "_lib/uses-test.js": 'import { t } from "./test.js";\nexport const u = () => t;\n',
    "types.d.ts": "export declare function add(a: number, b: number): number;\n",
    "math/add.d.mts": "export declare const add: (a: number, b: number) => number;\n",
    # Node-only: declared (bin, browser: false) and undeclared (imports node:fs)
    "bin/cli.js": 'import fs from "node:fs";\nfs.writeSync(1, "cli");\n',
    "lib/server.js": 'import http from "node:http";\nexport const s = http;\n',
    "dist-node/read.js": 'import { readFileSync } from "node:fs";\nexport const r = readFileSync;\n',
    "examples/await.js": "const x = await Promise.resolve(1);\nexport default x;\n",
    "styles/themed.js": 'import "./theme.scss";\nexport const themed = 1;\n',
    "styles/theme.scss": "$c: red; a { color: $c; }\n",
    "lib/pads.js": 'import pad from "left-pad";\nexport const p = pad;\n',
}


def write_version(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def unique_module(rng: random.Random, index: int, chars: int) -> str:
    """A module of about ``chars`` minified bytes that no other shares (random strings)."""
    words = ", ".join(
        json.dumps("".join(rng.choices(string.ascii_letters, k=40))) for _ in range(chars // 43)
    )
    return f"export const words{index} = [{words}];\nexport const m{index} = () => words{index}.length;\n"


# ---------------------------------------------------------------- plan units (no esbuild)


def test_declarations_and_declared_node_only_files_are_never_candidates(tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", AWKWARD)
    candidates = list_candidates(root)
    assert "types" not in candidates.files and "math/add.d.mts" not in candidates.files
    assert "bin/cli" not in candidates.files and "lib/server.js" not in candidates.files
    assert candidates.excluded == {"declaration": 2, "node_only": 2}
    assert candidates.files["math/add"] == "math/add.js"
    # the naive listing (the seed's) registered them all
    naive = {name for name, _ in list_registrations(root)} | {"types"}
    assert "dist-node/read" in naive


def test_node_only_paths_from_package_json() -> None:
    package = {
        "bin": "./cli.js",
        "browser": {"./lib/node.js": False, "./lib/fs.js": "./lib/fs-browser.js"},
        "exports": {
            ".": {"node": "./dist/node.js", "default": "./dist/index.js"},
            "./server": {"node": "./dist/server.js"},
            "./both": {"node": "./dist/both.js", "import": "./dist/both.js"},
        },
    }
    assert node_only_paths(package) == {
        "cli.js",
        "lib/node.js",
        "lib/fs.js",
        "dist/node.js",
        "dist/server.js",
    }


def test_entry_points_follow_browser_import_conditions() -> None:
    package = {
        "exports": {
            ".": {
                "require": {"types": "./index.d.cts", "default": "./index.cjs"},
                "import": {"types": "./index.d.ts", "default": "./index.js"},
            },
            "./hooks": {"browser": "./hooks/browser.js", "default": "./hooks/index.js"},
            "./only-cjs": {"require": "./x.cjs"},
            "./package.json": "./package.json",
            "./*": "./*.js",
        },
        "module": "./index.js",
        "main": "./index.cjs",
    }
    assert entry_point_paths(package) == [
        "index.js",
        "hooks/browser.js",
        "package.json",
        "index.cjs",
    ]
    assert entry_point_paths({"exports": "./main.js"}) == ["main.js"]


def test_operator_list_sections_and_errors() -> None:
    parsed = OperatorList.parse("# all versions\nindex\n\n[2.0.0]\nmath/mul  # pinned\n")
    assert parsed.names("2.0.0") == ("math/mul", "index")
    assert parsed.names("1.0.0") == ("index",)
    assert parsed.digest("1.0.0") != parsed.digest("2.0.0")
    with pytest.raises(ConfigError, match="line 2"):
        OperatorList.parse("index\n../etc/passwd\n", "list")


def test_ranking_operator_then_popular_then_entry_points_then_the_rest(tmp_path: Path) -> None:
    root = write_version(tmp_path / "v", AWKWARD)
    candidates = list_candidates(root)
    ranked = rank(candidates, ["math/mul"], ["greet"], ["index.js"])
    assert ranked[:6] == ["math/mul", "math/mul.js", "greet", "greet.js", "index", "index.js"]
    assert sorted(ranked) == sorted(candidates.files)


def test_select_respects_the_budget_and_names_what_it_left_out() -> None:
    survey = Survey(
        resolved={"a": "a.js", "b": "b.js", "c": "c.js", "d": "d.js"},
        imports={"a.js": ["shared.js"], "b.js": ["shared.js"], "c.js": ["bad.js"]},
        bytes_in_output={"a.js": 100, "b.js": 100, "shared.js": 500, "c.js": 10, "d.js": 900},
        base_bytes=50,
        bytes_per_name=10,
        failing={"bad.js": "Could not resolve x"},
        unresolved={},
    )
    picked = select(["a", "b", "c", "d", "e"], survey, max_bytes=1000)
    assert picked.names == ["a", "b"]  # the shared file is counted once
    assert picked.estimated_bytes == 50 + 10 + 100 + 500 + 10 + 100
    assert picked.left_out["c"].startswith("imports_failing: imports bad.js")
    assert picked.left_out["d"].startswith("over_budget")
    assert picked.left_out["e"].startswith("over_budget: not examined")


# ---------------------------------------------------------------- with esbuild


def builder(esbuild: str, tmp_path: Path) -> Builder:
    return Builder(
        esbuild, tmp_path / "tmp", pool_size=1, threads_per_build=1, timeout_s=20, niceness=0
    )


async def test_naive_every_file_fallback_of_the_awkward_version_fails(
    esbuild: str, tmp_path: Path
) -> None:
    """The control: the seed's fallback (every file, one esbuild run) has nothing to serve."""
    root = write_version(tmp_path / "src" / "1.0.0", AWKWARD)
    job = BuildJob.fallback("1.0.0", list_registrations(root), OPTIONS)
    with pytest.raises(BuildFailed):
        await builder(esbuild, tmp_path).build(job, root)


async def test_a_version_with_files_that_do_not_build_is_ready_with_the_rest(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    write_version(tmp_path / "src" / "1.0.0", AWKWARD)
    app = create_app(make_settings(source=str(tmp_path / "src"), default_version="1.0.0"))
    client = await aiohttp_client(app)
    started = time.monotonic()
    await wait_ready(client, timeout_s=10)
    assert time.monotonic() - started < 5
    rest = app[SERVICE].fallbacks.improving("1.0.0")  # ready on a first part: the rest follows
    if rest is not None:
        await asyncio.wait_for(rest, 10)
    manifest_file = tmp_path / "data" / "fallback" / "1.0.0" / "manifest.json"
    async with asyncio.timeout(10):  # written in the background
        while not manifest_file.exists():
            await asyncio.sleep(0.02)
    fallback = app[SERVICE].fallbacks.loaded("1.0.0")
    assert fallback is not None
    assert {"index", "greet", "math/add", "math/mul", "math/add.js"} <= fallback.names
    why = {name: reason.split(":")[0] for name, reason in fallback.left_out.items()}
    assert why["_lib/test"] == "does_not_build"
    assert why["_lib/uses-test"] == "imports_failing"
    assert why["dist-node/read"] == why["examples/await"] == "does_not_build"
    assert why["styles/themed"] == why["lib/pads"] == "does_not_build"
    assert not fallback.names & {"types", "bin/cli", "lib/server", "dist-node/read"}
    # The fallback works in a page; the manifest and the endpoint say what was left out.
    names = run_in_node(tmp_path, fallback.bundle.code, '__bundlerModules["math/mul"].mul(6, 7)')
    assert names == 42
    resp = await client.get("/fallback.json?v=1.0.0")
    info = await resp.json()
    assert info["left_out"]["_lib/test"].startswith("does_not_build: Could not resolve")
    assert info["left_out_counts"]["imports_failing"] == 2  # _lib/uses-test and its .js name
    assert "/" + str(tmp_path).strip("/") not in json.dumps(info)  # no machine path
    manifest = json.loads(manifest_file.read_text())
    assert manifest["left_out"] == info["left_out"]
    # A module the fallback left out still gets its own clear answer.
    resp = await client.get("/bundle.js?modules=_lib/test&v=1.0.0")
    assert resp.status == 422 and 'Could not resolve "./test/vitest"' in await resp.text()
    resp = await client.get("/bundle.js?modules=examples/await&v=1.0.0")
    assert resp.status == 422 and "Top-level await" in await resp.text()
    resp = await client.get("/bundle.js?modules=math/mul,greet&v=1.0.0")
    assert resp.status == 200


async def test_a_fallback_over_the_budget_keeps_the_popular_modules(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    esbuild: str,
    tmp_path: Path,
) -> None:
    rng = random.Random(1)
    files = {f"m{i:03}.js": unique_module(rng, i, 2000) for i in range(120)}
    files["index.js"] = "".join(f'export * from "./m{i:03}.js";\n' for i in range(120))
    root = write_version(tmp_path / "src" / "2.0.0", files)
    write_version(tmp_path / "src" / "1.0.0", {"m000.js": "export const m = 1;\n"})
    budget = 30_000
    # Control: the every-file fallback is far over the budget.
    naive = await builder(esbuild, tmp_path).build(
        BuildJob.fallback("2.0.0", list_registrations(root), OPTIONS), root
    )
    assert len(naive.code) > 6 * budget
    app = create_app(
        make_settings(
            source=str(tmp_path / "src"),
            default_version="1.0.0",
            fallback_max_bytes=budget,
            fallback_budget_ms=100,
        )
    )
    client = await aiohttp_client(app)
    await wait_ready(client)
    # What pages asked for before the release (the sketch is versionless)...
    popular = [f"m{i:03}" for i in (7, 42, 99, 3)]
    for _ in range(5):
        app[SERVICE].combos.record(tuple(sorted(popular[:2])))
    app[SERVICE].combos.record(tuple(sorted(popular[2:])))
    # ...chooses the new version's fallback.
    resp = await client.get("/fallback.json?v=2.0.0")
    info = await resp.json()
    assert info["bytes"] <= budget
    assert set(popular) <= set(info["names"])
    assert 4 <= info["modules"] // 2 < 30  # far from the 121 modules of the version
    assert info["left_out"]["index"].startswith("over_budget")
    # A page asking for popular modules can be served by the fallback; one asking for a
    # module the fallback left out gets its tailored bundle.
    assert app[SERVICE].fallbacks.loaded("2.0.0").covers(("m007", "m042"))  # type: ignore[union-attr]
    left = next(n for n in (f"m{i:03}" for i in range(120)) if n not in info["names"])
    resp = await client.get(f"/bundle.js?modules={left}&v=2.0.0")
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    assert left in run_in_node(tmp_path, await resp.read(), "Object.keys(__bundlerModules)")


async def test_the_operators_list_comes_first(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rng = random.Random(2)
    files = {f"m{i:03}.js": unique_module(rng, i, 2000) for i in range(40)}
    write_version(tmp_path / "src" / "1.0.0", files)
    listing = tmp_path / "fallback-modules.txt"
    listing.write_text("m031\n[1.0.0]\nm017\nnot/here\n")
    app = create_app(
        make_settings(
            source=str(tmp_path / "src"),
            default_version="1.0.0",
            fallback_max_bytes=5_000,
            fallback_modules=str(listing),
        )
    )
    client = await aiohttp_client(app)
    await wait_ready(client)
    fallback = app[SERVICE].fallbacks.loaded("1.0.0")
    assert fallback is not None and len(fallback.bundle.code) <= 5_000
    assert {"m017", "m031"} <= fallback.names
    assert "m000" not in fallback.names  # first in the alphabetical rest, but over budget
    assert fallback.left_out["not/here"].startswith("unknown")


# ---------------------------------------------------------------- a real package


@pytest.mark.slow
async def test_date_fns_is_ready_within_seconds_and_its_fallback_within_budget(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    esbuild: str,
    tmp_path: Path,
) -> None:
    """date-fns 4.1.0: 5,300 files, locale data, declaration files, and _lib/test.js
    importing ./test/vitest, which the package does not ship."""
    artifacts = ArtifactServer()
    artifacts.publish("4.1.0", npm_tarball("date-fns", "4.1.0"))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    budget = 200_000
    app = create_app(
        make_settings(
            source=artifacts.template,
            default_version="4.1.0",
            fallback_max_bytes=budget,
            build_timeout_s=60,
        )
    )
    client = await aiohttp_client(app)
    started = time.monotonic()
    await wait_ready(client, timeout_s=60)
    ready_s = time.monotonic() - started
    assert ready_s < 30, ready_s  # pull, extraction, survey and build
    fallback = app[SERVICE].fallbacks.loaded("4.1.0")
    assert fallback is not None and len(fallback.bundle.code) <= budget
    assert {"addDays", "format"} <= fallback.names
    assert not any(n.endswith((".d.ts", ".d.cts")) for n in fallback.names)
    # 2,459 declaration files: never extracted from a tarball, so never candidates.
    src = tmp_path / "data" / "sources" / "4.1.0"
    assert list(src.rglob("*.js")) and not list(src.rglob("*.d.ts"))
    assert "declaration" not in fallback.excluded
    check = '__bundlerModules["format"].format(new Date(2020, 0, 31), "yyyy-MM-dd")'
    assert run_in_node(tmp_path, fallback.bundle.code, check) == "2020-01-31"
    resp = await client.get("/bundle.js?modules=locale/de,formatDistance&v=4.1.0")
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    # The control: the seed's every-file fallback of the same version does not build.
    root = tmp_path / "data" / "sources" / "4.1.0"
    job = BuildJob.fallback("4.1.0", list_registrations(root), OPTIONS)
    with pytest.raises(BuildFailed, match="test/vitest"):
        await builder(esbuild, tmp_path).build(job, root)


@pytest.mark.slow
@pytest.mark.parametrize("knowing", ["old_fallback", "old_failures", "nothing"])
async def test_a_release_first_part_starts_from_what_the_old_fallback_knew(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    knowing: str,
) -> None:
    """rxjs 7.8.0 -> 7.8.1 (npm source, with its dependency tslib). Surveying rxjs takes
    three esbuild runs before a first part: its TypeScript sources fail the first survey,
    so it is run again without them, and then what builds is built. The old version's
    fallback knew what builds and fits: its modules are the new first part, in one run
    (old_fallback); without them, the files it found failing are left out of the first
    survey, which then goes through at once (old_failures: two runs). Naive: three."""
    registry = StaticRegistry(tmp_path / "registry")
    for version in ("7.8.0", "7.8.1"):
        registry.publish_real("rxjs", version)
    server = await aiohttp_server(registry.app())
    registry.url = str(server.make_url("")).rstrip("/")
    if knowing != "old_fallback":

        async def surveyed(*args: Any) -> None:
            return None

        monkeypatch.setattr(fallback_build, "as_before", surveyed)
    if knowing == "nothing":
        monkeypatch.setattr(Fallback, "not_built", lambda self: [])
    wanted = tmp_path / "fallback-modules.txt"
    operators = ("map", "filter", "mergeMap", "switchMap", "tap", "take", "debounceTime")
    wanted.write_text("".join(f"dist/esm5/internal/operators/{name}\n" for name in operators))
    settings = make_settings(
        source="npm:rxjs",
        npm_registry=registry.url,
        default_version="7.8.0",
        fallback_modules=str(wanted),
        fallback_max_bytes=100_000,
        build_timeout_s=60,
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    await wait_ready(client, timeout_s=60)
    service = app[SERVICE]
    old = service.fallbacks.loaded("7.8.0")
    assert old is not None and len(old.names) >= 10
    assert "src/Rx.global.js" in old.not_built() or knowing == "nothing"
    runs: list[str] = []  # the new version's fallback runs, in order
    first_part: list[tuple[frozenset[str], list[str]]] = []
    on_finish, on_loaded = service.builder.on_finish, service.fallbacks.on_loaded
    assert on_finish is not None and on_loaded is not None

    def finished(job: Any, seconds: float, result: str) -> None:
        if job.version == "7.8.1" and job.key.startswith("fallback"):
            runs.append(job.key.split(":")[0])
        on_finish(job, seconds, result)

    def loaded(fallback: Any) -> None:
        if fallback.version == "7.8.1" and not first_part:
            first_part.append((fallback.names, list(runs)))
        on_loaded(fallback)

    service.builder.on_finish, service.fallbacks.on_loaded = finished, loaded
    module = "dist/esm5/internal/operators/map"
    resp = await client.get(f"/bundle.js?modules={module}&v=7.8.1")
    assert resp.status == 200
    info = await (await client.get("/fallback.json?v=7.8.1")).json()
    assert info["bytes"] <= 100_000
    names, before = first_part[0]
    if knowing == "old_fallback":
        assert before == ["fallback"] and names == old.names, before
    elif knowing == "old_failures":
        assert before == ["fallback-survey", "fallback"], before
    else:
        assert before[:2] == ["fallback-survey", "fallback-survey"], before


def test_an_old_fallback_made_before_pages_came_is_not_the_first_part() -> None:
    """A fallback built at a fresh start, before any page asked, holds entry points; at
    the next release the pages' most wanted modules are surveyed instead of repeating
    it. One chosen by the same traffic stands in for the survey."""
    ranked = [f"m{i}" for i in range(100)]
    popular = tuple(ranked[:30])
    stale = Plan(max_bytes=1000, popular=popular, previous=tuple(ranked[60:80]))
    aligned = Plan(max_bytes=1000, popular=popular, previous=tuple(ranked[:20] + ranked[90:]))
    nobody_asked = Plan(max_bytes=1000, previous=tuple(ranked[60:80]))
    assert not fallback_build.still_wanted(stale, ranked)
    assert fallback_build.still_wanted(aligned, ranked)
    assert fallback_build.still_wanted(nobody_asked, ranked)
    assert not fallback_build.still_wanted(Plan(max_bytes=1000), ranked)
