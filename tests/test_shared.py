"""The shared tier (--redis-url): replicas share bundles, one build per key, and their
popularity, through a real redis-server (Debian's; `make test` installs it).

Without redis-server these tests are skipped with a loud reason; everything else runs.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.fleet import client as shared_module
from bundler.fleet.client import RedisFleet
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import EXAMPLES, free_port, start_service, wait_process_ready, wait_ready
from tests.test_carry import COMBOS, answer, changed_package, write_version
from tests.test_fallback import metrics, with_a_broken_module
from tests.test_identity import QUERY as IDENTITY_QUERY
from tests.test_identity import keyed_as_before, two_sources

REDIS_SERVER = shutil.which("redis-server")
if REDIS_SERVER is None:
    pytest.skip(
        "!!! redis-server is not installed: the shared-tier tests are SKIPPED. "
        "Install Debian's redis-server (make test tries apt-get) to run them. !!!",
        allow_module_level=True,
    )

QUERY = "/bundle.js?modules=components/card,components/hero&v=1.1.0"
MAP_QUERY = QUERY.replace("bundle.js", "bundle.js.map")


class RedisServer:
    """A real redis-server on a port of its own, stoppable and restartable."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise AssertionError("redis-server exited") from None
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


OnRedis = tuple[Any, TestClient, Callable[[], int]]


@pytest.fixture
async def on_redis(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    redis_server: RedisServer,
) -> OnRedis:
    """One service in this process on the shared tier: its app, client and esbuild runs."""
    wrapper, runs = counting_esbuild
    app = create_app(make_settings(redis_url=redis_server.url, esbuild=wrapper))
    client = await aiohttp_client(app)
    await wait_ready(client)
    return app, client, runs


@pytest.fixture
async def tier(redis_server: RedisServer) -> AsyncIterator[RedisFleet]:
    """A shared tier alone, connected, with a 50 ms operation timeout."""
    made = RedisFleet(redis_server.url, timeout_s=0.05, ttl_s=60)
    await made.start()
    assert await made.get("warm-up") is None  # connected
    yield made
    await made.close()


async def made_up_its_mind(tier: RedisFleet) -> None:
    """Until the tier has made up its mind about timeouts in a row (its PING)."""
    async with asyncio.timeout(2):
        while tier.deciding:
            await asyncio.sleep(0.01)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def bundle_key(app: Any, query: str) -> str:
    pairs = [tuple(p.split("=", 1)) for p in query.split("?", 1)[1].split("&")]
    spec, _ = await app[SERVICE].parse(pairs)
    return str(spec.key)


def start_replica(
    port: int, data_dir: Path, esbuild: str, redis_url: str, log: Path
) -> subprocess.Popen[bytes]:
    return start_service(
        port, log, "--data-dir", str(data_dir), "--esbuild", esbuild,
        "--redis-url", redis_url, "--fallback-budget-ms", "-1", "--drain-s", "0",
    )  # fmt: skip


@pytest.fixture
async def replicas(
    tmp_path: Path, counting_esbuild: tuple[str, Callable[[], int]]
) -> AsyncIterator[Callable[[str, int], Any]]:
    started: list[subprocess.Popen[bytes]] = []

    async def start(redis_url: str, count: int) -> list[str]:
        wrapper, _ = counting_esbuild
        urls = []
        for _ in range(count):
            port = free_port()
            log = tmp_path / f"replica-{len(started)}.log"
            started.append(
                start_replica(port, tmp_path / f"data-{len(started)}", wrapper, redis_url, log)
            )
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as session:
            for url in urls:
                await wait_process_ready(session, url, timeout_s=60)
        return urls

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
    for proc in started:
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["redis", "naive"])
async def test_a_bundle_one_replica_process_built_is_a_hit_on_another(
    replicas: Any,
    redis_server: RedisServer,
    counting_esbuild: tuple[str, Callable[[], int]],
    shared: bool,
) -> None:
    """Two service processes: the second answers what the first built with no esbuild run
    (counted by the wrapper both use). Naive: it builds it again."""
    [first] = await replicas(redis_server.url if shared else "", 1)
    _, runs = counting_esbuild
    async with aiohttp.ClientSession() as session:
        async with session.get(first + QUERY) as resp:
            assert resp.status == 200
            body = await resp.read()
        # A developer opens devtools: the map is made by a second run, on request.
        async with session.get(first + MAP_QUERY) as resp:
            assert resp.status == 200
            sourcemap = await resp.read()
        [second] = await replicas(redis_server.url if shared else "", 1)
        before = runs()
        async with session.get(second + QUERY) as resp:
            assert resp.status == 200 and await resp.read() == body
        async with session.get(second + MAP_QUERY) as resp:
            assert resp.status == 200 and await resp.read() == sourcemap
    # Naive: one run for the bundle, one for its map.
    assert runs() - before == (0 if shared else 2)


@pytest.mark.slow
@pytest.mark.parametrize("shared", [True, False], ids=["redis", "naive"])
async def test_fifty_cold_requests_over_three_processes_build_once(
    replicas: Any,
    redis_server: RedisServer,
    counting_esbuild: tuple[str, Callable[[], int]],
    shared: bool,
) -> None:
    """Naive: each replica's own single flight builds it once, three builds in all."""
    urls = await replicas(redis_server.url if shared else "", 3)
    _, runs = counting_esbuild
    before = runs()  # nothing is built at the start: the example versions' fallbacks ship
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, str]:
            async with session.get(urls[i % 3] + QUERY) as resp:
                return resp.status, await resp.text()

        answers = await asyncio.gather(*(one(i) for i in range(50)))
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
    assert runs() - before == (1 if shared else 3)


@pytest.mark.slow
async def test_a_lease_held_by_a_killed_replica_lapses_and_another_builds(
    redis_server: RedisServer, esbuild: str, tmp_path: Path
) -> None:
    """Replica A takes the lease and builds slowly; it is killed with -9 mid-build. Replica
    B, asked for the same bundle, waits for the lease (woken by nothing: A is gone), takes
    it when it lapses, and builds."""
    slow = tmp_path / "esbuild-slow"
    slow.write_text(f'#!/bin/sh\nsleep 30\nexec "{esbuild}" "$@"\n')
    slow.chmod(0o755)
    ports = [free_port(), free_port()]
    a = start_replica(ports[0], tmp_path / "a", str(slow), redis_server.url, tmp_path / "a.log")
    b = start_replica(ports[1], tmp_path / "b", esbuild, redis_server.url, tmp_path / "b.log")
    try:
        async with aiohttp.ClientSession() as session:
            for port in ports:
                await wait_process_ready(session, f"http://127.0.0.1:{port}", timeout_s=60)
            pending = asyncio.ensure_future(session.get(f"http://127.0.0.1:{ports[0]}{QUERY}"))
            leases = redis_server.client()
            async with asyncio.timeout(20):
                while not leases.keys("bundler:lease:*"):
                    await asyncio.sleep(0.02)
            a.send_signal(signal.SIGKILL)
            a.wait(timeout=10)
            pending.cancel()
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with session.get(f"http://127.0.0.1:{ports[1]}{QUERY}") as resp:
                assert resp.status == 200
                assert resp.headers["X-Bundle-Mode"] == "tailored"
            waited = loop.time() - started
            async with session.get(f"http://127.0.0.1:{ports[1]}/metrics") as resp:
                text = await resp.text()
        assert "bundler_shared_lease_waits_total 1.0" in text
        assert 0.5 < waited < 10, waited  # the lease's lapse (3 s at most), then the build
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)


async def test_a_corrupt_shared_value_is_rebuilt_not_served(
    on_redis: OnRedis, redis_server: RedisServer
) -> None:
    app, client, runs = on_redis
    key = f"bundler:b:{await bundle_key(app, QUERY)}"
    # An entry in the right format that does not check out (a bad hand, a torn write).
    redis_server.client().set(key, b"bundler-entry-1\n" + b'{"key": "x"}\n' + b"garbage")
    resp = await client.get(QUERY)
    text = await resp.text()
    assert resp.status == 200 and "garbage" not in text
    assert runs() == 1
    assert (await metrics(client))["bundler_shared_lookups_total{result=corrupt}"] == 1
    async with asyncio.timeout(5):  # deleted, then the rebuilt bundle written in its place
        while True:
            value = redis_server.client().get(key)
            if value is not None and not value.startswith(b'bundler-entry-1\n{"key": "x"}'):
                break
            await asyncio.sleep(0.05)


async def test_a_corrupt_shared_source_map_is_made_again_not_served(
    on_redis: OnRedis, redis_server: RedisServer
) -> None:
    app, client, runs = on_redis
    resp = await client.get(MAP_QUERY)
    assert resp.status == 200
    sourcemap = await resp.read()
    store = redis_server.client()
    async with asyncio.timeout(5):  # the bundle's map and its CSS's, made by one run
        while len(names := store.keys("bundler:m:*")) < 2:
            await asyncio.sleep(0.05)
    [name] = [n for n in names if b":css:" not in n]
    store.set(name, store.get(name)[:-10])  # truncated
    app[SERVICE].maps.clear()  # as on a replica that never made it
    before = runs()
    resp = await client.get(MAP_QUERY)
    assert resp.status == 200 and await resp.read() == sourcemap
    assert runs() - before == 1
    assert (await metrics(client))["bundler_shared_lookups_total{result=corrupt}"] == 1


async def test_redis_stopped_and_restarted_mid_traffic_gives_no_5xx(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
) -> None:
    app = create_app(make_settings(redis_url=redis_server.url))
    client = await aiohttp_client(app)
    await wait_ready(client)
    names = ["card", "hero", "nav", "footer", "tabs", "rating", "accordion", "carousel"]
    statuses: list[int] = []

    pairs = iter([(a, b) for a in names for b in names if a < b])

    async def traffic(rounds: int) -> None:
        for _ in range(rounds):  # each a cold bundle: a shared lookup, a lease, a write
            a, b = next(pairs)
            resp = await client.get(f"/bundle.js?modules=components/{a},components/{b}&v=1.1.0")
            statuses.append(resp.status)

    await traffic(5)
    redis_server.stop()
    await traffic(10)
    down = await metrics(client)
    assert down["bundler_shared_up"] == 0
    assert (
        down["bundler_shared_state{state=down}"] == 1
        and down["bundler_shared_state{state=up}"] == 0
    )
    assert (await client.get("/readyz")).status == 200  # readiness never depends on Redis
    redis_server.start()
    await asyncio.sleep(1.2)  # the tier leaves Redis alone for a second after a failure
    await traffic(10)
    assert set(statuses) == {200}, statuses
    up = await metrics(client)
    assert up["bundler_shared_up"] == 1
    assert up["bundler_shared_state{state=up}"] == 1 and up["bundler_shared_state{state=down}"] == 0


async def test_combos_are_the_fleets(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Each replica's distinct clients (named by a trusted proxy) are summed in Redis."""
    settings = functools.partial(
        make_settings, redis_url=redis_server.url, trusted_proxies="127.0.0.1"
    )
    a = await aiohttp_client(create_app(settings()))
    b = await aiohttp_client(create_app(settings(data_dir=str(tmp_path / "b"))))
    await wait_ready(a)
    await wait_ready(b)
    for i in range(3):
        resp = await a.get(
            "/bundle.js?modules=components/card&v=1.1.0",
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
        )
        assert resp.status == 200
    for i in range(2):
        resp = await b.get(
            "/bundle.js?modules=components/hero&v=1.1.0",
            headers={"X-Forwarded-For": f"192.0.2.{i}"},
        )
        assert resp.status == 200
    await b.app[SERVICE].fleet.flush_combos()
    combos = (await (await a.get("/combos?top=10")).json())["combos"]
    assert {"modules": ["components/card"], "count": 3} in combos
    assert {"modules": ["components/hero"], "count": 2} in combos


async def test_warming_one_replica_warms_the_fleet(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """What `bundler warm --server` does (POST /warm) against one replica: another answers
    those bundles without building."""
    warmed = await aiohttp_client(create_app(make_settings(redis_url=redis_server.url)))
    await wait_ready(warmed)
    lists = [["components/card"], ["components/hero", "components/nav"], ["components/tabs"]]
    for modules in lists:
        resp = await warmed.post("/warm", json={"version": "1.1.0", "modules": modules})
        assert resp.status == 200, await resp.text()
    wrapper, runs = counting_esbuild
    other = await aiohttp_client(
        create_app(
            make_settings(redis_url=redis_server.url, esbuild=wrapper, data_dir=str(tmp_path / "b"))
        )
    )
    await wait_ready(other)
    for modules in lists:
        resp = await other.get(f"/bundle.js?modules={','.join(modules)}&v=1.1.0")
        assert resp.status == 200
    assert runs() == 0


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "naive"])
async def test_a_fallback_one_replica_built_is_taken_by_another(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    redis_server: RedisServer,
    tmp_path: Path,
    shared: bool,
) -> None:
    """A release's new version: its fallback is built once for the fleet (no survey, no
    build on the second replica). Naive: each replica builds its own."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    shutil.copytree(EXAMPLES / "1.1.0", source / "3.0.0")  # no static fallback of its own
    url = redis_server.url if shared else ""
    first = create_app(make_settings(source=str(source), redis_url=url))
    await wait_ready(await aiohttp_client(first))
    built = await first[SERVICE].fallbacks.get("3.0.0")
    assert built is not None
    if shared:
        async with asyncio.timeout(10):  # written in the background
            while not redis_server.client().keys("bundler:fb:*"):
                await asyncio.sleep(0.02)
    wrapper, runs = counting_esbuild
    second = create_app(
        make_settings(
            source=str(source), redis_url=url, esbuild=wrapper, data_dir=str(tmp_path / "b")
        )
    )
    await wait_ready(await aiohttp_client(second))
    taken = await second[SERVICE].fallbacks.get("3.0.0")
    assert taken is not None and taken.names == built.names
    assert taken.bundle.code == built.bundle.code
    assert (runs() == 0) == shared, runs()


@pytest.mark.parametrize("tolerant", [True, False], ids=["service", "naive"])
async def test_one_slow_answer_is_not_an_outage(
    tier: RedisFleet, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, tolerant: bool
) -> None:
    """Redis paused for 300 ms (CLIENT PAUSE): the operation caught in it times out, and the
    tier stays up (the next one goes to Redis). Naive: down at the first timeout, and
    every replica builds on its own for the next second."""
    if not tolerant:
        monkeypatch.setattr(shared_module, "FAILURES_TO_DOWN", 1)
        monkeypatch.setattr(shared_module, "CONFIRM_TIMEOUT_S", 0.0)
    redis_server.client().client_pause(300)
    assert await tier.get("caught-in-the-pause") is None
    assert tier.results["error"] == 1
    await made_up_its_mind(tier)
    assert tier.up == tolerant


@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "naive"])
async def test_timeouts_in_a_row_are_not_an_outage_while_redis_answers_a_ping(
    tier: RedisFleet, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, confirmed: bool
) -> None:
    """Redis too slow for 300 ms (CLIENT PAUSE; on a storm's few CPUs, a starved Redis or a
    replica's connection pool): three operations in a row time out, then a PING given
    time to spare answers, and the tier stays up. Naive (no time to spare): down, and for
    a second every replica builds on its own."""
    if not confirmed:
        monkeypatch.setattr(shared_module, "CONFIRM_TIMEOUT_S", 0.0)
    redis_server.client().client_pause(300)
    for i in range(shared_module.FAILURES_TO_DOWN):
        assert await tier.get(f"caught-{i}") is None
    assert tier.results["error"] == shared_module.FAILURES_TO_DOWN
    await made_up_its_mind(tier)
    assert tier.up == confirmed
    assert tier.results["busy"] == (1 if confirmed else 0)


async def test_a_hung_redis_is_taken_for_down_and_left_alone(
    tier: RedisFleet, redis_server: RedisServer
) -> None:
    """SIGSTOP: Redis accepts nothing and answers nothing. Timeouts, then the PING fails:
    down, and for a second nothing is asked of it (no request pays the timeout)."""
    assert redis_server.proc is not None
    try:
        redis_server.proc.send_signal(signal.SIGSTOP)
        for i in range(shared_module.FAILURES_TO_DOWN):
            assert await tier.get(f"hung-{i}") is None
        async with asyncio.timeout(3):
            while tier.up:
                await asyncio.sleep(0.02)
        started = time.monotonic()
        assert await tier.get("while-down") is None
        assert time.monotonic() - started < 0.02
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


@pytest.mark.slow
async def test_two_processes_on_two_sources_sharing_one_redis_serve_their_own(
    tmp_path: Path, redis_server: RedisServer, esbuild: str
) -> None:
    """Two deployments, one redis-server, each its own 1.1.0: the second gets its own
    bundle (and its own 404), never the one the first put in Redis."""
    a, b = two_sources(tmp_path)
    procs, urls = [], []
    for name, source in (("a", a), ("b", b)):
        port = free_port()
        flags = [
            "--source", str(source), "--data-dir", str(tmp_path / f"data-{name}"),
            "--esbuild", esbuild, "--redis-url", redis_server.url,
            "--fallback-budget-ms", "-1", "--drain-s", "0",
        ]  # fmt: skip
        procs.append(start_service(port, tmp_path / f"{name}.log", *flags))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as session:
            for url in urls:
                await wait_process_ready(session, url, timeout_s=60)
            async with session.get(urls[0] + IDENTITY_QUERY) as resp:
                assert resp.status == 200 and b"source B" not in await resp.read()
            async with asyncio.timeout(10):  # written in the background
                while not redis_server.client().keys("bundler:b:*"):
                    await asyncio.sleep(0.02)
            async with session.get(urls[1] + IDENTITY_QUERY) as resp:
                body = await resp.read()
                assert resp.status == 200 and body.count(b"of source B") == 2, body[:300]
            async with session.get(urls[1] + IDENTITY_QUERY.replace("card", "nav")) as resp:
                assert resp.status == 404
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)


@pytest.mark.parametrize("keys", ["content", "naive"])
async def test_two_sources_sharing_one_redis_in_process_with_the_naive_control(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: str,
) -> None:
    """As above, two apps with their own data dirs: only Redis can carry a bundle from
    one to the other. Naive (no content in the key): B is served A's bundle."""
    if keys == "naive":
        keyed_as_before(monkeypatch)
    a, b = two_sources(tmp_path)
    first = create_app(make_settings(source=str(a), redis_url=redis_server.url))
    client = await aiohttp_client(first)
    await wait_ready(client)
    assert (await client.get(IDENTITY_QUERY)).status == 200
    async with asyncio.timeout(10):  # written in the background
        while not redis_server.client().keys("bundler:b:*"):
            await asyncio.sleep(0.02)
    second = create_app(
        make_settings(source=str(b), redis_url=redis_server.url, data_dir=str(tmp_path / "b"))
    )
    other = await aiohttp_client(second)
    await wait_ready(other)
    resp = await other.get(IDENTITY_QUERY)
    assert resp.status == 200
    assert (b"of source B" in await resp.read()) == (keys == "content")


@pytest.mark.parametrize("released", [True, False], ids=["service", "naive"])
async def test_a_failed_build_releases_its_lease_so_other_replicas_do_not_wait_for_it(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    released: bool,
) -> None:
    """Replica A's build of a broken module fails (422); its lease must go with it. Naive
    (the lease kept, as before): A renews it for as long as it runs, and replica B, asked
    for the same bundle, waits for it to land or lapse, which never happens."""
    if not released:
        monkeypatch.setattr("bundler.service.core.BundleService.fail_lease", lambda *a: None)
    source = with_a_broken_module(tmp_path)
    a, b = [
        await aiohttp_client(
            create_app(
                make_settings(
                    source=str(source),
                    default_version="2.0.0",
                    redis_url=redis_server.url,
                    data_dir=str(tmp_path / name),
                )
            )
        )
        for name in ("a", "b")
    ]
    await wait_ready(a)
    await wait_ready(b)
    query = "/bundle.js?modules=components/broken&v=2.0.0"
    assert (await a.get(query)).status == 422
    await asyncio.sleep(1.5)  # past a renewal: a kept lease is still there
    assert bool(redis_server.client().keys("bundler:lease:*")) != released
    try:
        async with asyncio.timeout(5):
            status = (await b.get(query)).status
    except TimeoutError:
        status = None
    assert status == (422 if released else None)


async def carry_fleet(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    tmp_path: Path,
    b_settings: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Two ready replicas A and B sharing one Redis, serving a fixture release (1.0.1
    changes only the version field: every bundle of 1.0.0 can be carried over), with no
    sweep; ``b_settings`` for B alone."""
    source = tmp_path / "fx"
    write_version(source / "1.0.0", {})
    write_version(source / "1.0.1", changed_package(version="1.0.1"))

    def settings(name: str, **extra: Any) -> Settings:
        return make_settings(
            source=str(source),
            default_version="1.0.0",
            data_dir=str(tmp_path / name),
            redis_url=redis_server.url,
            carry_sweep_top=0,
            **extra,
        )

    a = await aiohttp_client(create_app(settings("a")))
    b = await aiohttp_client(create_app(settings("b", **(b_settings or {}))))
    await wait_ready(a)
    await wait_ready(b)
    return a, b


async def test_a_bundle_one_replica_carried_over_is_taken_by_another_from_the_shared_tier(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Replica A carries 1.0.1's bundles over from 1.0.0's; replica B, asked for them,
    takes them from Redis: no esbuild run and no decision of its own."""
    wrapper, runs = counting_esbuild
    a, b = await carry_fleet(
        aiohttp_client, make_settings, redis_server, tmp_path, {"esbuild": wrapper}
    )
    for version in ("1.0.0", "1.0.1"):
        for modules in COMBOS:
            assert (await answer(a, modules, version))[0] == 200
    assert a.app[SERVICE].carrier.results["carried"] == len(COMBOS)
    await a.app[SERVICE].tiers.flush()  # in Redis
    before = runs()
    for modules in COMBOS:
        assert await answer(b, modules, "1.0.1") == await answer(a, modules, "1.0.1")
    assert runs() == before
    assert not b.app[SERVICE].carrier.results
    assert b.app[SERVICE].tiers.lookups["shared_hit"] == len(COMBOS)


@pytest.mark.parametrize("from_the_fleet", [True, False], ids=["carried", "naive"])
async def test_a_replica_carries_over_from_bundles_another_replica_built(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    tmp_path: Path,
    from_the_fleet: bool,
) -> None:
    """Replica A built 1.0.0's bundles (a fleet's replicas each build a part of a
    version's); replica B, which never built or read them, is asked for 1.0.1: it finds
    1.0.0's in Redis by their key and carries them over, with no build. The naive control
    (only what this process built or read can be carried, as before) builds them all."""
    a, b = await carry_fleet(aiohttp_client, make_settings, redis_server, tmp_path)
    for modules in COMBOS:
        assert (await answer(a, modules, "1.0.0"))[0] == 200
    await a.app[SERVICE].tiers.flush()  # in Redis
    carrier = b.app[SERVICE].carrier
    if not from_the_fleet:
        carrier.carry_from = tuple
    for modules in COMBOS:
        assert (await answer(b, modules, "1.0.1"))[0] == 200
    built = b.app[SERVICE].builder.results["ok"]  # 1.0.1's fallback is one of them
    if from_the_fleet:
        assert carrier.results["carried"] == len(COMBOS)
        assert built <= 1
    else:
        assert carrier.results["carried"] == 0
        assert built >= len(COMBOS)
