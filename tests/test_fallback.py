"""The static fallback, the fallback budget, load shedding, readiness and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import filecmp
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from bundler.app import create_app
from bundler.fallback import build as fallback_build
from bundler.fallback.store import FallbackStore, Stage
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import EXAMPLES, ROOT, run_in_node, wait_ready
from tests.fakes import delayed_esbuild
from tests.tarballs import LIB_FILES, ArtifactServer, make_tarball


@pytest.fixture
def slow_esbuild(tmp_path: Path, esbuild: str) -> Callable[[float], tuple[str, Callable[[], int]]]:
    def make(delay_s: float) -> tuple[str, Callable[[], int]]:
        """Every build takes ``delay_s`` longer than the budget allows."""
        path, log = delayed_esbuild(
            tmp_path, esbuild, fallback_delay=delay_s, tailored_delay=delay_s
        )
        return path, lambda: len(log.read_text().splitlines()) if log.exists() else 0

    return make


async def metrics(client: TestClient) -> dict[str, float]:
    text = await (await client.get("/metrics")).text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


async def test_cold_miss_past_the_budget_gets_the_fallback_then_tailored(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any, tmp_path: Path
) -> None:
    esbuild, _ = slow_esbuild(0.5)
    client = await aiohttp_client(
        create_app(make_settings(esbuild=esbuild, fallback_budget_ms=100))
    )
    await wait_ready(client)
    query = "/bundle.js?modules=components/hero,components/rating&v=1.1.0"
    started = time.monotonic()
    resp = await client.get(query)
    waited = time.monotonic() - started
    body = await resp.read()
    assert resp.status == 200
    assert resp.headers["X-Bundle-Mode"] == "fallback"
    assert resp.headers["Cache-Control"] == "public, max-age=30"
    assert resp.headers["CDN-Cache-Control"] == "public, max-age=30"
    assert resp.headers["ETag"].startswith('"fb-')
    assert resp.headers["Cache-Status"] == "bundler; fwd=miss; detail=fallback"
    assert 0.1 <= waited < 0.45
    # The fallback serves the page the same: every requested name is registered.
    names = run_in_node(
        tmp_path,
        body,
        '[Object.keys(__bundlerModules).length, __bundlerModules["components/rating"].stars(4)]',
    )
    assert names[0] > 20 and names[1] == "★★★★☆"
    await asyncio.sleep(0.6)  # the build went on in the background and filled the cache
    resp = await client.get(query)
    assert resp.headers["X-Bundle-Mode"] == "tailored"
    assert resp.headers["Cache-Status"] == "bundler; hit"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "CDN-Cache-Control" not in resp.headers


async def test_budget_zero_always_answers_a_miss_with_the_fallback(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(fallback_budget_ms=0)))
    await wait_ready(client)
    resp = await client.get("/bundle.js?modules=components/tabs")
    assert resp.headers["X-Bundle-Mode"] == "fallback"
    for _ in range(100):  # the background build lands in the cache
        await asyncio.sleep(0.02)
        resp = await client.get("/bundle.js?modules=components/tabs")
        if resp.headers["X-Bundle-Mode"] == "tailored":
            break
    assert resp.headers["X-Bundle-Mode"] == "tailored"


async def test_full_queue_sheds_to_the_fallback_without_queuing(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any
) -> None:
    esbuild, runs = slow_esbuild(0.6)
    settings = make_settings(
        esbuild=esbuild, build_pool_size=1, build_queue_max=1, fallback_budget_ms=5000
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    await wait_ready(client)
    first = asyncio.create_task(client.get("/bundle.js?modules=components/card"))
    await asyncio.sleep(0.2)  # building
    second = asyncio.create_task(client.get("/bundle.js?modules=components/nav"))
    await asyncio.sleep(0.2)  # queued: the queue is full now
    assert app[SERVICE].builder.queued == 1
    started = time.monotonic()
    shed = await client.get("/bundle.js?modules=components/footer")
    assert time.monotonic() - started < 0.2
    assert shed.headers["X-Bundle-Mode"] == "fallback"
    # Not never built (as before): deferred, at warm-up priority, behind the pages' builds.
    service = app[SERVICE]
    assert [r.headers["X-Bundle-Mode"] for r in await asyncio.gather(first, second)] == [
        "tailored",
        "tailored",
    ]
    async with asyncio.timeout(10):
        while service.requests["shed"] == 1 and service.deferred.pending:
            await asyncio.sleep(0.05)
    again = await client.get("/bundle.js?modules=components/footer")
    assert again.headers["X-Bundle-Mode"] == "tailored"
    values = await metrics(client)
    assert values["bundler_requests_total{mode=shed}"] == 1
    assert values["bundler_requests_total{mode=built}"] == 2
    assert values["bundler_requests_total{mode=hit}"] == 1  # the deferred build filled the cache
    assert values["bundler_builds_total{result=ok}"] == 3
    assert runs() <= 3  # the deferred one may share the second page's run


def with_a_broken_module(tmp_path: Path) -> Path:
    """A source whose version 2.0.0 is the examples plus components/broken, which does
    not build (a syntax error)."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "2.0.0")
    (source / "2.0.0" / "components" / "broken.js").write_text("export const = 1;\n")
    return source


async def test_failed_build_is_not_hidden_by_the_fallback(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source = with_a_broken_module(tmp_path)
    client = await aiohttp_client(
        create_app(
            make_settings(source=str(source), default_version="2.0.0", fallback_budget_ms=2000)
        )
    )
    resp = await client.get("/bundle.js?modules=components/hero")
    # The version's fallback cannot be built (one module is broken): tailored still works.
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    resp = await client.get("/bundle.js?modules=components/broken")
    assert resp.status == 422


async def test_unknown_module_is_404_even_with_a_fallback(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(fallback_budget_ms=0)))
    await wait_ready(client)
    resp = await client.get("/bundle.js?modules=components/hero,components/nope")
    assert resp.status == 404  # the fallback does not have it: the build decides


async def test_fallback_for_a_new_version_is_built_once(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
) -> None:
    artifacts = ArtifactServer()
    artifacts.publish("1.0.0", make_tarball(LIB_FILES))
    artifacts.publish("2.0.0", make_tarball({**LIB_FILES, "extra.js": b"export const e = 1;\n"}))
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    wrapper, runs = counting_esbuild
    app = create_app(
        make_settings(
            esbuild=wrapper,
            source=artifacts.template,
            default_version="1.0.0",
            fallback_budget_ms=0,
            build_queue_max=-1,
        )
    )
    client = await aiohttp_client(app)
    await wait_ready(client)
    fallbacks = app[SERVICE].fallbacks
    assert fallbacks.builds == 1  # the default version's, at start
    modules = ["index", "extra", "math/add", "greet"]
    responses = await asyncio.gather(
        *(client.get(f"/bundle.js?modules={modules[i % 4]}&v=2.0.0") for i in range(100))
    )
    assert {r.status for r in responses} == {200}
    modes = [r.headers["X-Bundle-Mode"] for r in responses]
    # Nobody waits on the fallback: each took whichever was ready first.
    assert set(modes) <= {"fallback", "tailored"}
    assert fallbacks.builds == 2
    assert artifacts.hits["2.0.0"] == 1
    await asyncio.sleep(0.5)
    # Two fallbacks (one run each: a survey whose every module builds and fits is the
    # fallback itself), then one tailored build per distinct list; queued ones of one
    # version may share an esbuild run.
    builder = app[SERVICE].builder
    assert builder.results["ok"] == 2 + 4
    assert runs() == builder.runs["survey"] + builder.runs["single"] + builder.runs["batch"]
    assert runs() <= 2 + 4


async def test_readiness_waits_for_the_default_fallback_and_drops_when_draining(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    # Same version name, different source: static_fallback/1.1.0 must not be used for it.
    (source / "1.1.0" / "components" / "extra.js").write_text("export const extra = 1;\n")
    esbuild, _ = slow_esbuild(0.5)
    app = create_app(make_settings(source=str(source), esbuild=esbuild))
    client = await aiohttp_client(app)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert "fallback is not loaded" in await resp.text()
    assert (await client.get("/healthz")).status == 200
    await wait_ready(client)
    # Written behind the first use (after the slow brotli 11): it lands soon after.
    stored = tmp_path / "data" / "fallback" / "1.1.0" / "bundle.js"
    async with asyncio.timeout(20):
        while not stored.exists():
            await asyncio.sleep(0.05)
    app[SERVICE].begin_drain()
    resp = await client.get("/readyz")
    assert resp.status == 503 and "draining" in await resp.text()
    assert (await client.get("/healthz")).status == 200


async def test_fallback_source_map(client: TestClient) -> None:
    resp = await client.get("/fallback.js.map?v=1.0.0")
    assert resp.status == 200
    source_map = await resp.json()
    assert "components/hero.js" in source_map["sources"]
    assert all(not s.startswith(("/", "..")) for s in source_map["sources"])
    assert (await client.get("/fallback.js.map?v=../x")).status == 400
    assert (await client.get("/fallback.js.map?v=7.7.7")).status == 404


async def test_metrics_move_when_requests_are_made(client: TestClient) -> None:
    before = await metrics(client)
    assert before["bundler_ready"] == 1
    assert before["bundler_build_pool_size"] >= 1
    await client.get("/bundle.js?modules=components/hero")
    await client.get("/bundle.js?modules=components/hero")
    await client.get("/bundle.js?modules=components/nope")
    after = await metrics(client)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("bundler_requests_total{mode=built}") == 1
    assert grew("bundler_requests_total{mode=hit}") == 1
    assert grew("bundler_requests_total{mode=error}") == 1
    assert grew("bundler_cache_lookups_total{result=miss}") == 2
    assert grew("bundler_builds_total{result=ok}") == 1
    # An unknown name is found before esbuild runs: no build at all.
    assert grew("bundler_builds_total{result=unknown_module}") == 0
    assert grew("bundler_build_duration_seconds_count{kind=tailored}") == 1
    assert after["bundler_cache_entries{tier=memory}"] == 1
    assert after["bundler_cache_bytes{tier=memory}"] > 0
    await asyncio.sleep(0.2)  # the disk write is not on the response's path
    later = await metrics(client)
    assert later["bundler_cache_entries{tier=disk}"] == 1


async def test_a_300ms_blocking_call_shows_in_the_lag_metric(
    aiohttp_client: Any, make_settings: Callable[..., Settings], capfd: pytest.CaptureFixture[str]
) -> None:
    client = await aiohttp_client(create_app(make_settings(watchdog_stall_s=0.2)))
    await wait_ready(client)
    await asyncio.sleep(0.25)
    before = await metrics(client)
    assert before["bundler_event_loop_lag_max_seconds"] < 0.25
    time.sleep(0.3)  # the injected blocking call
    await asyncio.sleep(0.25)
    after = await metrics(client)
    assert after["bundler_event_loop_lag_max_seconds"] >= 0.25
    slow_samples = (
        after["bundler_event_loop_lag_seconds_count"]
        - after["bundler_event_loop_lag_seconds_bucket{le=0.25}"]
    ) - (
        before["bundler_event_loop_lag_seconds_count"]
        - before["bundler_event_loop_lag_seconds_bucket{le=0.25}"]
    )
    assert slow_samples == 1
    assert (
        "test_a_300ms_blocking_call_shows_in_the_lag_metric" in capfd.readouterr().err
    )  # watchdog


@pytest.mark.slow
def test_committed_static_fallbacks_are_up_to_date(tmp_path: Path) -> None:
    """static_fallback/ is what build-fallback makes from examples/ today (esbuild is deterministic)."""
    for version in ("1.0.0", "1.1.0"):
        subprocess.run(
            [sys.executable, "-m", "bundler", "build-fallback", "--version", version,
             "--out", str(tmp_path), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        committed = ROOT / "static_fallback" / version
        for name in ("bundle.js", "bundle.js.map", "manifest.json"):
            assert filecmp.cmp(committed / name, tmp_path / version / name, shallow=False), (
                f"static_fallback/{version}/{name} is stale: run "
                f"`bundler build-fallback --version {version} --out static_fallback`"
            )


async def test_a_lagging_loop_sheds_misses_to_the_fallback(
    aiohttp_client: Any, make_settings: Callable[..., Settings], counting_esbuild: Any
) -> None:
    wrapper, runs = counting_esbuild
    app = create_app(make_settings(esbuild=wrapper, fallback_budget_ms=5000, shed_lag_ms=50))
    client = await aiohttp_client(app)
    await wait_ready(client)
    for _ in range(3):  # three stalls of 300 ms: the smoothed lag climbs past 50 ms
        time.sleep(0.3)
        await asyncio.sleep(0.15)
    assert app[SERVICE].lag.smoothed_s > 0.05
    resp = await client.get("/bundle.js?modules=components/hero")
    assert resp.headers["X-Bundle-Mode"] == "fallback"
    assert runs() == 0  # shed: no build queued


async def test_warm_and_map_requests_are_bounded_by_the_queue_too(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any
) -> None:
    esbuild, _ = slow_esbuild(0.6)
    settings = make_settings(esbuild=esbuild, build_pool_size=1, build_queue_max=1)
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    busy = [
        asyncio.create_task(client.get(f"/bundle.js.map?modules=components/{name}"))
        for name in ("card", "nav")
    ]
    await asyncio.sleep(0.2)
    resp = await client.post("/warm", json={"version": "1.1.0", "modules": ["components/tabs"]})
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert "queue is full" in await resp.text()
    assert [r.status for r in await asyncio.gather(*busy)] == [200, 200]


def split_esbuild(tmp_path: Path, real: str, fallback_delay: float, tailored_delay: float) -> str:
    """The real esbuild, each build held back: a fallback's ``fallback_delay`` s,
    a tailored one's ``tailored_delay`` s."""
    path, _ = delayed_esbuild(
        tmp_path, real, fallback_delay=fallback_delay, tailored_delay=tailored_delay
    )
    return path


async def new_version_app(
    aiohttp_client: Any, settings: Settings, tmp_path: Path
) -> tuple[web.Application, TestClient]:
    """Ready on 1.1.0 (its static fallback applies), with a new 3.0.0 whose fallback
    must be built, as in a release."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    shutil.copytree(EXAMPLES / "1.1.0", source / "3.0.0")
    app = create_app(dataclasses.replace(settings, source=str(source)))
    client = await aiohttp_client(app)
    await wait_ready(client)
    return app, client


async def test_a_miss_does_not_wait_for_a_slow_fallback(
    aiohttp_client: Any, make_settings: Callable[..., Settings], esbuild: str, tmp_path: Path
) -> None:
    """Its own bundle is ready first: the request takes it, the fallback still building."""
    app, client = await new_version_app(
        aiohttp_client,
        make_settings(
            esbuild=split_esbuild(tmp_path, esbuild, fallback_delay=3, tailored_delay=0),
            fallback_budget_ms=100,
        ),
        tmp_path,
    )
    started = time.monotonic()
    resp = await client.get("/bundle.js?modules=components/hero&v=3.0.0")
    waited = time.monotonic() - started
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "tailored"
    assert app[SERVICE].fallbacks.loaded("3.0.0") is None  # still being built
    assert waited < 2, waited  # the seed waited for the fallback first: over 3 s here


async def test_a_miss_takes_the_fallback_as_soon_as_it_exists(
    aiohttp_client: Any, make_settings: Callable[..., Settings], esbuild: str, tmp_path: Path
) -> None:
    """Its own bundle is slow: past the budget, the fallback the moment it is built."""
    app, client = await new_version_app(
        aiohttp_client,
        make_settings(
            esbuild=split_esbuild(tmp_path, esbuild, fallback_delay=0.3, tailored_delay=4),
            fallback_budget_ms=100,
            build_queue_max=-1,
        ),
        tmp_path,
    )
    started = time.monotonic()
    resp = await client.get("/bundle.js?modules=components/card&v=3.0.0")
    waited = time.monotonic() - started
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "fallback"
    assert 0.25 < waited < 3, waited  # the fallback's run, not the 4 s build
    # A module the fallback does not have waits for its own bundle.
    resp = await client.get("/bundle.js?modules=components/nope&v=3.0.0")
    assert resp.status == 404
    # The quickly compressed fallback is replaced by its brotli-11 form behind the scenes,
    # once no build needs the CPU (the page's 4 s build is still under way now).
    service = app[SERVICE]
    fallback = service.fallbacks.loaded("3.0.0")
    assert service.builder.busy and fallback is not None and fallback.bundle.br_quality == 5
    for _ in range(500):
        fallback = service.fallbacks.loaded("3.0.0")
        if fallback is not None and fallback.bundle.br_quality == 11:
            break
        await asyncio.sleep(0.02)
    assert fallback is not None and fallback.bundle.br_quality == 11
    assert not service.builder.busy


async def test_a_full_queue_still_builds_a_page_the_fallback_cannot_serve_and_first(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any, tmp_path: Path
) -> None:
    """The seed answered 503 here: a partial fallback must not turn a busy pool into errors."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "3.0.0")
    listing = tmp_path / "fallback-modules.txt"
    listing.write_text("components/card\ncomponents/nav\n")
    esbuild, _ = slow_esbuild(0.5)
    app = create_app(
        make_settings(
            source=str(source),
            default_version="3.0.0",
            esbuild=esbuild,
            build_pool_size=1,
            build_queue_max=1,
            build_batch_max=1,  # one bundle per run: the order is visible
            fallback_budget_ms=5000,
            fallback_modules=str(listing),
            fallback_max_bytes=3000,
        )
    )
    client = await aiohttp_client(app)
    await wait_ready(client)
    fallback = app[SERVICE].fallbacks.loaded("3.0.0")
    assert fallback is not None and "components/footer" not in fallback.names
    done: list[str] = []

    async def get(name: str) -> str:
        resp = await client.get(f"/bundle.js?modules=components/{name}")
        done.append(name)
        return f"{resp.status} {resp.headers.get('X-Bundle-Mode')}"

    first = asyncio.create_task(get("card"))  # covered: builds
    await asyncio.sleep(0.2)
    second = asyncio.create_task(get("nav"))  # covered: queued, the queue is full now
    await asyncio.sleep(0.1)
    third = asyncio.create_task(get("footer"))  # not covered: built, ahead of nav
    shed = await get("card,components/nav")  # covered: the fallback at once
    assert shed == "200 fallback"
    assert await asyncio.gather(first, second, third) == ["200 tailored"] * 3
    assert done.index("footer") < done.index("nav")


async def test_a_page_the_new_fallback_does_not_cover_moves_up_the_queue(
    aiohttp_client: Any, make_settings: Callable[..., Settings], esbuild: str, tmp_path: Path
) -> None:
    """Queued before its version's fallback existed (so at the ordinary priority), a page
    the fallback then turns out not to cover has no other answer: its build goes first."""
    modules = tmp_path / "fallback-modules.txt"
    modules.write_text("components/card\n")
    app, client = await new_version_app(
        aiohttp_client,
        make_settings(
            esbuild=split_esbuild(tmp_path, esbuild, fallback_delay=0.5, tailored_delay=0.4),
            fallback_budget_ms=50,
            build_pool_size=1,
            build_batch_max=1,  # one bundle per run: the order is visible
            fallback_modules=str(modules),
            fallback_max_bytes=5000,  # components/card and little else
        ),
        tmp_path,
    )
    built: list[str] = []
    observe = app[SERVICE].builder.on_finish

    def record(job: Any, seconds: float, result: str) -> None:
        built.append(job.label)
        if observe is not None:
            observe(job, seconds, result)

    app[SERVICE].builder.on_finish = record
    running = asyncio.create_task(client.get("/bundle.js?modules=components/nav&v=3.0.0"))
    await asyncio.sleep(0.1)  # its build holds the one slot; the fallback queues first
    covered = asyncio.create_task(client.get("/bundle.js?modules=components/card&v=3.0.0"))
    await asyncio.sleep(0.05)
    uncovered = asyncio.create_task(client.get("/bundle.js?modules=components/tabs&v=3.0.0"))
    resps = await asyncio.gather(running, covered, uncovered)
    fallback = app[SERVICE].fallbacks.loaded("3.0.0")
    assert fallback is not None and fallback.covers(("components/card",))
    assert not fallback.covers(("components/tabs",))
    assert resps[1].headers["X-Bundle-Mode"] == "fallback"
    assert resps[2].headers["X-Bundle-Mode"] == "tailored"
    async with asyncio.timeout(10):
        while len([b for b in built if "v=3.0.0" in b]) < 3:
            await asyncio.sleep(0.05)
    tailored = [b for b in built if "v=3.0.0" in b]
    # Arrival order would build card before tabs; the page without another answer went first.
    assert tailored.index("modules=components/tabs&v=3.0.0") < tailored.index(
        "modules=components/card&v=3.0.0"
    ), tailored


async def test_with_no_fallback_budget_a_burst_beyond_the_queue_waits_not_503(
    aiohttp_client: Any, make_settings: Callable[..., Settings], slow_esbuild: Any
) -> None:
    """--fallback-budget-ms -1 is documented as "never the fallback, always wait": a burst
    past the queue bound waits for its bundles (it used to get 503s)."""
    esbuild, _ = slow_esbuild(0.2)
    client = await aiohttp_client(
        create_app(
            make_settings(
                esbuild=esbuild, build_pool_size=1, build_queue_max=1, fallback_budget_ms=-1
            )
        )
    )
    await wait_ready(client)
    names = ["card", "nav", "footer", "tabs", "hero", "rating"]
    responses = await asyncio.gather(
        *(client.get(f"/bundle.js?modules=components/{n}") for n in names)
    )
    assert [r.status for r in responses] == [200] * len(names)
    assert {r.headers["X-Bundle-Mode"] for r in responses} == {"tailored"}


def many_small_modules(directory: Path, count: int) -> None:
    """``count`` modules whose source is mostly comment: esbuild keeps a fifth of it."""
    for i in range(count):
        (directory / f"m{i:02d}.js").write_text(
            f"// {'commentary that minification drops. ' * 8}\n"
            f'export const value{i} = "module {i:02d} {"x" * 20}";\n'
        )


def two_part_release(tmp_path: Path) -> Path:
    """A source whose new 3.0.0 holds 60 small modules: its fallback comes in two parts."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    (source / "3.0.0").mkdir()
    many_small_modules(source / "3.0.0", 60)
    return source


def two_part_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, esbuild: str, source: Path
) -> Settings:
    """A small fallback budget; fallback runs 0.5 s slower, tailored builds 4 s."""
    return make_settings(
        source=str(source),
        esbuild=split_esbuild(tmp_path, esbuild, fallback_delay=0.5, tailored_delay=4),
        fallback_max_bytes=4000,
        fallback_budget_ms=100,
        build_queue_max=-1,
    )


@pytest.mark.parametrize("wait_for_the_rest", [True, False], ids=["service", "naive"])
async def test_a_first_part_is_served_at_once_and_the_rest_answers_pages_waiting_for_it(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    esbuild: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wait_for_the_rest: bool,
) -> None:
    """A large package's fallback comes in two parts: the most wanted modules from one
    quick survey run, then the complete selection. A page that the first part does not
    cover but the rest does gets the fallback the moment the rest is out, not its own
    (slow) build. Naive: nothing wakes it, and it waits the 4 s build."""
    source = two_part_release(tmp_path)
    if not wait_for_the_rest:
        monkeypatch.setattr(FallbackStore, "improving", lambda self, version: None)
    settings = two_part_settings(make_settings, tmp_path, esbuild, source)
    app = create_app(settings)
    client = await aiohttp_client(app)
    await wait_ready(client)
    fallbacks = app[SERVICE].fallbacks
    published: list[frozenset[str]] = []
    on_loaded = fallbacks.on_loaded
    assert on_loaded is not None

    def record(fallback: Any) -> None:
        if fallback.version == "3.0.0":
            published.append(fallback.names)
        on_loaded(fallback)

    fallbacks.on_loaded = record
    # The first request starts the fallback; it is answered by the first part.
    first = await client.get("/bundle.js?modules=m00&v=3.0.0")
    assert first.headers["X-Bundle-Mode"] == "fallback"
    assert len(published) == 1 and "m00" in published[0]
    late = sorted(f"m{i:02d}" for i in range(60) if f"m{i:02d}" not in published[0])[0]
    started = time.monotonic()
    resp = await client.get(f"/bundle.js?modules={late}&v=3.0.0")
    waited = time.monotonic() - started
    assert resp.status == 200
    if wait_for_the_rest:
        assert len(published) == 2 and published[0] < published[1] and late in published[1]
        assert resp.headers["X-Bundle-Mode"] == "fallback" and waited < 3, waited
        ready = await metrics(client)
        first_s = ready["bundler_fallback_ready_seconds{part=first,version=3.0.0}"]
        assert first_s < ready["bundler_fallback_ready_seconds{part=all,version=3.0.0}"]
    else:
        assert resp.headers["X-Bundle-Mode"] == "tailored" and waited > 3.5, waited


async def test_a_versions_fallback_goes_through_its_stages(
    aiohttp_client: Any, make_settings: Callable[..., Settings], esbuild: str, tmp_path: Path
) -> None:
    """NONE, MAKING, FIRST_PART (as it is published, so the queue is reordered knowing
    the rest is coming), WHOLE; a version whose fallback cannot be built is FAILED."""
    source = two_part_release(tmp_path)
    broken = source / "4.0.0"
    shutil.copytree(source / "3.0.0", broken)
    for module in broken.glob("m*.js"):
        module.write_text("export const = 1;\n")
    app = create_app(two_part_settings(make_settings, tmp_path, esbuild, source))
    client = await aiohttp_client(app)
    await wait_ready(client)
    fallbacks = app[SERVICE].fallbacks
    on_loaded = fallbacks.on_loaded
    assert on_loaded is not None
    seen: list[Stage] = []

    def record(fallback: Any) -> None:
        if fallback.version == "3.0.0":
            seen.append(fallbacks.stage("3.0.0"))
        on_loaded(fallback)

    fallbacks.on_loaded = record
    assert fallbacks.stage("3.0.0") is Stage.NONE
    fallbacks.ensure("3.0.0")
    assert fallbacks.stage("3.0.0") is Stage.MAKING
    whole = await fallbacks.get("3.0.0")
    assert whole is not None and seen == [Stage.FIRST_PART, Stage.WHOLE]
    assert fallbacks.stage("3.0.0") is Stage.WHOLE and fallbacks.stage("3.0.0").usable
    assert await fallbacks.get("4.0.0") is None
    assert fallbacks.stage("4.0.0") is Stage.FAILED and not Stage.FAILED.usable


@pytest.mark.parametrize("first_part", [True, False], ids=["service", "naive"])
async def test_a_file_that_does_not_build_does_not_hold_back_the_first_part(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    esbuild: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    first_part: bool,
) -> None:
    """One of the most wanted files imports a file the package does not ship (rxjs ships
    TypeScript sources that do not build on their own): the survey's bundle cannot be the
    fallback, and what does build is published at once as the first part. Naive (as
    before): the first part is dropped and pages wait for the complete selection."""
    source = two_part_release(tmp_path)
    (source / "3.0.0" / "m00.js").write_text('export { gone } from "./not-shipped.js";\n')
    if not first_part:

        async def dropped(*args: Any) -> None:
            return None

        monkeypatch.setattr(fallback_build, "build_selection", dropped)
    settings = two_part_settings(make_settings, tmp_path, esbuild, source)
    client = await aiohttp_client(create_app(settings))
    await wait_ready(client)
    resp = await client.get("/bundle.js?modules=m01&v=3.0.0")
    assert resp.status == 200 and resp.headers["X-Bundle-Mode"] == "fallback"
    ready = await metrics(client)
    # Seconds from the first need to the first usable fallback, and to the complete one
    # (not there yet when the first part answered).
    first_s = ready["bundler_fallback_ready_seconds{part=first,version=3.0.0}"]
    all_s = ready.get("bundler_fallback_ready_seconds{part=all,version=3.0.0}")
    assert (all_s is None or first_s < all_s) == first_part, (first_s, all_s)
    info = await (await client.get("/fallback.json?v=3.0.0")).json()
    assert "m00" in info["left_out"] and "not-shipped" in info["left_out"]["m00"]
