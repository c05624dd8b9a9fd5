"""Tarball sources against a real local artifact server: pulled once, failures handled."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from bundler.sources import TarballSource
from tests.conftest import free_port, run_in_node, wait_ready
from tests.tarballs import LIB_FILES, ArtifactServer, make_tarball

MakeClient = Callable[..., Awaitable[tuple[TestClient, ArtifactServer]]]


@pytest.fixture
def artifacts() -> ArtifactServer:
    server = ArtifactServer()
    server.publish("1.0.0", make_tarball(LIB_FILES))
    server.publish(
        "2.0.0",
        make_tarball({**LIB_FILES, "math/mul.js": b"export const mul = (a, b) => a * b;\n"}),
    )
    return server


@pytest.fixture
def make_client(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    artifacts: ArtifactServer,
) -> MakeClient:
    async def make(**overrides: Any) -> tuple[TestClient, ArtifactServer]:
        server = await aiohttp_server(artifacts.app())
        artifacts.url = f"http://127.0.0.1:{server.port}"
        values = {
            "source": artifacts.template,
            "default_version": "1.0.0",
            "source_retry_backoff_s": 0.01,
            **overrides,
        }
        client = await aiohttp_client(create_app(make_settings(**values)))
        await wait_ready(client)
        return client, artifacts

    return make


def store(client: TestClient) -> TarballSource:
    source = client.app[SERVICE].source
    assert isinstance(source, TarballSource)
    return source


async def test_npm_tarball_with_bare_imports_from_its_node_modules(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, _ = await make_client()
    resp = await client.get("/bundle.js?modules=index,math/add&v=1.0.0")
    code = await resp.read()
    assert resp.status == 200, code
    result = run_in_node(
        tmp_path,
        code,
        '[__bundlerModules["index"].greet("ann"), __bundlerModules["math/add"].add(2, 3)]',
    )
    assert result == ["HI ANN!", 5]


async def test_100_concurrent_cold_requests_download_once(make_client: MakeClient) -> None:
    client, artifacts = await make_client()
    assert artifacts.hits["2.0.0"] == 0
    responses = await asyncio.gather(
        *(
            client.get(f"/bundle.js?modules=math/mul,{m}&v=2.0.0")
            for m in ("index", "math/add") * 50
        )
    )
    assert [r.status for r in responses] == [200] * 100
    assert artifacts.hits["2.0.0"] == 1
    assert store(client).pulls == 2  # the default version at start, then 2.0.0 once


async def test_server_error_then_success_is_retried(make_client: MakeClient) -> None:
    client, artifacts = await make_client()
    artifacts.fail_first["2.0.0"] = 2
    resp = await client.get("/bundle.js?modules=math/mul&v=2.0.0")
    assert resp.status == 200, await resp.text()
    assert artifacts.hits["2.0.0"] == 3


async def test_persistent_server_errors_give_503_and_are_remembered(
    make_client: MakeClient,
) -> None:
    client, artifacts = await make_client(source_failure_ttl_s=0.5, source_retries=2)
    artifacts.fail_first["2.0.0"] = 100
    responses = await asyncio.gather(
        *(client.get("/bundle.js?modules=index&v=2.0.0") for _ in range(20))
    )
    texts = {await r.text() for r in responses}
    assert {r.status for r in responses} == {503}
    assert texts == {"the artifact server failed 3 times, last with HTTP 500\n"}
    assert all(r.headers["Retry-After"] == "1" for r in responses)
    assert all(r.headers["Cache-Control"] == "no-store" for r in responses)
    assert artifacts.hits["2.0.0"] == 3  # one pull of 3 attempts for all 20 requests
    assert (await client.get("/bundle.js?modules=index&v=2.0.0")).status == 503
    assert artifacts.hits["2.0.0"] == 3  # remembered: no new attempt
    await asyncio.sleep(0.6)
    artifacts.fail_first["2.0.0"] = 0
    assert (await client.get("/bundle.js?modules=index&v=2.0.0")).status == 200
    assert artifacts.hits["2.0.0"] == 4


async def test_404_means_the_version_does_not_exist_and_is_not_retried(
    make_client: MakeClient,
) -> None:
    client, artifacts = await make_client()
    resp = await client.get("/bundle.js?modules=index&v=9.9.9")
    assert resp.status == 404
    assert "does not exist" in await resp.text()
    assert artifacts.hits["9.9.9"] == 1


async def test_slow_server_hits_the_pull_deadline(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_download_timeout_s=0.5)
    noise = random.Random(3).randbytes(200_000)  # incompressible: about 50 slow chunks
    artifacts.publish("3.0.0", make_tarball({**LIB_FILES, "big.js": noise}))
    artifacts.slow_s = 0.05
    resp = await client.get("/bundle.js?modules=index&v=3.0.0")
    assert resp.status == 503
    assert "took longer than 0.5 s" in await resp.text()


async def test_truncated_body_is_retried_then_reported(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_retries=1)
    artifacts.truncate.add("2.0.0")
    resp = await client.get("/bundle.js?modules=index&v=2.0.0")
    assert resp.status == 503
    assert "failed 2 times" in await resp.text()
    assert artifacts.hits["2.0.0"] == 2


async def test_published_checksum_is_verified(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_checksum="published")
    assert (await client.get("/bundle.js?modules=index&v=2.0.0")).status == 200
    artifacts.publish("3.0.0", make_tarball(LIB_FILES))
    artifacts.checksums["3.0.0"] = "0" * 64
    resp = await client.get("/bundle.js?modules=index&v=3.0.0")
    assert resp.status == 503
    assert "does not match the expected " + "0" * 64 in await resp.text()


async def test_pinned_checksums(make_client: MakeClient, artifacts: ArtifactServer) -> None:
    pins = f"1.0.0:{artifacts.checksums['1.0.0']},2.0.0:{'a' * 64}"
    client, _ = await make_client(source_checksum=pins)
    resp = await client.get("/bundle.js?modules=index&v=2.0.0")
    assert resp.status == 503 and "does not match" in await resp.text()
    artifacts.publish("4.0.0", make_tarball(LIB_FILES))
    resp = await client.get("/bundle.js?modules=index&v=4.0.0")
    assert resp.status == 503 and "no pinned SHA-256 for version 4.0.0" in await resp.text()


async def test_oversized_download_is_refused(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_max_download_bytes=20_000)
    artifacts.publish("3.0.0", make_tarball({"noise.js": random.Random(4).randbytes(100_000)}))
    resp = await client.get("/bundle.js?modules=noise&v=3.0.0")
    assert resp.status == 503
    assert "larger than 20000 bytes" in await resp.text()


async def test_unsafe_tarball_over_http_is_503_and_installs_nothing(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, artifacts = await make_client()
    artifacts.publish("6.6.6", make_tarball({"../../evil.js": b"x"}, prefix=""))
    resp = await client.get("/bundle.js?modules=index&v=6.6.6")
    assert resp.status == 503
    assert "escapes with '..'" in await resp.text()
    sources = tmp_path / "data" / "sources"
    assert sorted(p.name for p in sources.iterdir()) == [".lock", "1.0.0"]


async def test_housekeeping_keeps_recent_versions_and_the_default(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client, artifacts = await make_client(source_keep_versions=2)
    for version in ("2.0.0", "3.0.0", "4.0.0", "5.0.0"):
        artifacts.publish(version, make_tarball(LIB_FILES))
        assert (await client.get(f"/bundle.js?modules=index&v={version}")).status == 200
    assert sorted(store(client).installed()) == ["1.0.0", "4.0.0", "5.0.0"]
    # The removed one comes back on demand.
    assert (await client.get("/bundle.js?modules=math/add&v=2.0.0")).status == 200


async def test_housekeeping_spares_a_version_in_use(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_keep_versions=1)
    source = store(client)
    async with source.use("1.0.0"):
        pass
    artifacts.publish("3.0.0", make_tarball(LIB_FILES))
    async with source.use("2.0.0"):
        async with source.use("3.0.0"):
            pass  # pulling 3.0.0 ran housekeeping while 2.0.0 was in use
        assert "2.0.0" in source.installed()
    assert await source.housekeep() == ["2.0.0"]


async def test_not_ready_until_the_default_version_is_pulled(
    aiohttp_server: Any,
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    artifacts: ArtifactServer,
) -> None:
    server = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{server.port}"
    artifacts.fail_first["1.0.0"] = 1  # the first pull fails; the service retries in 1 s
    client = await aiohttp_client(
        create_app(
            make_settings(
                source=artifacts.template,
                default_version="1.0.0",
                source_retries=0,
                source_failure_ttl_s=0.1,
            )
        )
    )
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    await wait_ready(client)
    assert artifacts.hits["1.0.0"] == 2


async def test_pull_outcomes_are_counted_for_the_metrics(make_client: MakeClient) -> None:
    client, artifacts = await make_client(source_retries=0)
    artifacts.fail_first["2.0.0"] = 100
    assert (await client.get("/bundle.js?modules=index&v=2.0.0")).status == 503
    assert (await client.get("/bundle.js?modules=index&v=9.9.9")).status == 404
    text = await (await client.get("/metrics")).text()
    for result in ("ok", "failed", "not_found"):
        assert f'bundler_source_pulls_total{{result="{result}"}} 1.0' in text


async def test_an_unreachable_artifact_server_is_not_named_to_clients(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The 503 says what failed, not where: the artifact server is internal. The log says."""
    client, artifacts = await make_client(source_retries=1)
    internal = artifacts.url
    artifacts.url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    host_port = artifacts.url.removeprefix("http://")
    app_source = store(client)
    app_source.url_template = artifacts.template
    resp = await client.get("/bundle.js?modules=index&v=2.0.0")
    text = await resp.text()
    assert resp.status == 503, text
    assert "the artifact server failed 2 times, last with ClientConnectorError" in text
    assert "127.0.0.1" not in text and host_port not in text and internal not in text
    # The operator still sees where (the log line's error field).
    assert any(host_port in str(getattr(r, "error", "")) for r in caplog.records)


async def test_a_pull_is_timed_by_phase(make_client: MakeClient) -> None:
    """/metrics says where a release's pull went (download, extract, publish), and the
    phases account for the pull's whole time; a tarball source installs no dependencies."""
    client, _ = await make_client()
    before = store(client).pull_seconds
    assert (await client.get("/bundle.js?modules=index&v=2.0.0")).status == 200
    text = await (await client.get("/metrics")).text()
    phases = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bundler_source_pull_phase_seconds_total{")
    }
    assert set(phases) == {"download", "extract", "publish"}
    assert all(seconds > 0 for seconds in phases.values())
    total = float(
        next(
            line.rsplit(" ", 1)[1]
            for line in text.splitlines()
            if line.startswith("bundler_source_pull_seconds_total ")
        )
    )
    assert total > before
    assert sum(phases.values()) <= total + 1e-6
    assert sum(phases.values()) > 0.5 * total  # the rest: the work dir's set-up, housekeeping
