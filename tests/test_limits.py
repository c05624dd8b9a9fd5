"""Client limits (bundler.limits) and who a client is (bundler.clients): real HTTP from
several loopback addresses, real esbuild builds."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from bundler.app import create_app
from bundler.clients import ClientIds
from bundler.combos import PopularCombos
from bundler.keys import SERVICE
from bundler.limits import ClientLimits
from bundler.settings import Settings

COMPONENTS = [
    "accordion", "banner", "card", "carousel", "cookie-banner", "countdown", "footer",
    "hero", "nav", "newsletter", "price-tag", "rating", "tabs",
]  # fmt: skip


def test_a_client_is_its_address_unless_a_trusted_proxy_names_it() -> None:
    ids = ClientIds("10.0.0.0/8, 2001:db8:ffff::/48", "x-forwarded-for")
    xff = CIMultiDict({"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.1.1"})
    # From an untrusted address the header proves nothing.
    assert ids.of("198.51.100.9", xff) == "198.51.100.9"
    # From a trusted proxy: read from the right, skipping trusted hops; what the client
    # wrote itself (6.6.6.6, left of the first untrusted hop) is never taken.
    assert ids.of("10.0.0.2", xff) == "203.0.113.7"
    assert ids.of("10.0.0.2", CIMultiDict()) == "10.0.0.2"
    garbage = CIMultiDict({"X-Forwarded-For": "203.0.113.7, not-an-address"})
    assert ids.of("10.0.0.2", garbage) == "10.0.0.2"
    # Every line of the header, in order.
    lines = CIMultiDict([("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "10.9.9.9")])
    assert ids.of("10.0.0.2", lines) == "203.0.113.7"
    # An IPv6 client is its /64; a v4-mapped peer is its v4 address.
    assert ids.of("2001:db8:1:2:aaaa::1", CIMultiDict()) == "2001:db8:1:2::/64"
    assert ids.of("::ffff:198.51.100.9", CIMultiDict()) == "198.51.100.9"
    forwarded = ClientIds("10.0.0.0/8", "forwarded")
    header = CIMultiDict({"Forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https'})
    assert forwarded.of("10.0.0.2", header) == "2001:db8:cafe::/64"
    cdn = ClientIds("10.0.0.0/8", "cf-connecting-ip")
    assert cdn.of("10.0.0.2", CIMultiDict({"CF-Connecting-IP": "203.0.113.7"})) == "203.0.113.7"
    assert cdn.of("10.0.0.2", xff) == "10.0.0.2"  # not its header


def test_a_bucket_refills_at_its_rate_and_reports_its_client_once() -> None:
    limits = ClientLimits(requests_per_s=0, builds_per_s=2, build_burst=3)
    assert [limits.build("a") for _ in range(3)] == [0, 0, 0]
    assert 0 < limits.build("a") <= 0.5
    assert limits.build("b") == 0  # another client, its own bucket
    assert limits.limited["builds"] == 1
    assert limits.release_quiet() == []  # limited just now
    assert limits.release_quiet(now=float("inf")) == ["a"]


@asynccontextmanager
async def serving(aiohttp_server: Any, settings: Settings) -> AsyncIterator[tuple[str, Any]]:
    """The service on a real port (its app's service too), ready."""
    server = await aiohttp_server(create_app(settings))
    url = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as probe:
        for _ in range(600):
            async with probe.get(url + "/readyz") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)
    yield url, server.app[SERVICE]


def session_from(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (127.0.0.0/8 is all loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0))


@pytest.mark.parametrize("trusted", ["127.0.0.5", "0.0.0.0/0"], ids=["trusted-proxy", "naive"])
async def test_a_forwarded_header_is_ignored_from_an_untrusted_address(
    aiohttp_server: Any, make_settings: Callable[..., Settings], trusted: str
) -> None:
    """127.0.0.2 sends X-Forwarded-For with a new address each time, to look like many
    clients: it is limited as itself. The trusted proxy (127.0.0.5) names its clients
    and each has its own limit. The naive control trusts the header from anyone: the
    spoofer is never limited."""
    settings = make_settings(trusted_proxies=trusted, client_requests_per_s=5)
    query = "/bundle.js?modules=components/card"
    async with serving(aiohttp_server, settings) as (url, _):
        statuses: dict[str, list[int]] = {}
        for address in ("127.0.0.2", "127.0.0.5"):
            async with session_from(address) as session:

                async def ask(i: int) -> int:
                    headers = {"X-Forwarded-For": f"198.51.100.{i}"}
                    async with session.get(url + query, headers=headers) as resp:
                        if resp.status == 429:
                            assert int(resp.headers["Retry-After"]) >= 1
                            assert "too many requests from 127.0.0.2" in await resp.text()
                        return resp.status

                # All at once: a 429 is held a second, so asked one after another the
                # thirty would take half a minute.
                statuses[address] = list(await asyncio.gather(*(ask(i) for i in range(30))))
    assert statuses["127.0.0.5"] == [200] * 30  # thirty clients, one request each
    if trusted == "0.0.0.0/0":
        assert statuses["127.0.0.2"] == [200] * 30
    else:
        # A burst of 10 (twice the rate), then none for a while: twenty 429s.
        assert statuses["127.0.0.2"].count(429) >= 19


@pytest.mark.parametrize("limited", [True, False], ids=["budget", "naive"])
async def test_a_client_past_its_build_budget_never_delays_another_clients_build(
    aiohttp_server: Any, make_settings: Callable[..., Settings], limited: bool
) -> None:
    """127.0.0.2 asks for 60 distinct cold combinations at once; then 127.0.0.3 asks for
    one. With a budget the flood starts 4 builds and gets the fallback or a 429 for the
    rest, so the honest build waits behind at most those 4. The naive control (one
    shared queue, no budget) builds the flood's first: most of its 60 builds end before
    the honest client's one."""
    settings = make_settings(
        client_builds_per_s=0.1 if limited else 0,
        client_build_burst=4,
        build_pool_size=1,
        build_batch_max=2,
    )
    combos = [
        ",".join(f"components/{c}" for c in trio) for trio in itertools.combinations(COMPONENTS, 3)
    ][:61]
    async with (
        serving(aiohttp_server, settings) as (url, service),
        session_from("127.0.0.2") as flood,
        session_from("127.0.0.3") as honest,
    ):

        async def ask(session: aiohttp.ClientSession, modules: str) -> tuple[int, str]:
            async with session.get(f"{url}/bundle.js?modules={modules}") as resp:
                await resp.read()
                return resp.status, resp.headers.get("X-Bundle-Mode", "tailored")

        before = service.builder.results["ok"]
        flooding = [asyncio.ensure_future(ask(flood, m)) for m in combos[:60]]
        for _ in range(200):  # until every flood request started its build or was answered
            if len(service.flight) + sum(f.done() for f in flooding) >= 60:
                break
            await asyncio.sleep(0.05)
        answer = await ask(honest, combos[60])
        built_before_it = service.builder.results["ok"] - before
        results = await asyncio.gather(*flooding)
    assert answer == (200, "tailored")
    if limited:
        assert built_before_it <= 5  # the flood's 4, and its own
        assert results.count((200, "tailored")) == 4
        rest = results.count((200, "fallback")) + results.count((429, "tailored"))
        assert rest == 56
    else:
        assert built_before_it >= 40
        assert results == [(200, "tailored")] * 60


@pytest.mark.parametrize("per_client", [True, False], ids=["distinct-clients", "naive"])
def test_popularity_is_not_for_one_client_to_buy(tmp_path: Path, per_client: bool) -> None:
    """Five combinations asked by ten clients each rank above a flood's: one combination
    asked 1,000 times and 3,000 asked once each, by one client. The naive control counts
    every ask: the flood's repeated combination comes first."""
    combos = PopularCombos(tmp_path / "combos", top_k=1000)  # the default

    def ask(client: str, modules: tuple[str, ...]) -> None:
        if not per_client or combos.first_ask(client, modules):
            combos.record(modules)

    honest = [("lib/a", f"lib/{i}") for i in range(5)]
    for n in range(10):
        for modules in honest:
            ask(f"10.0.0.{n}", modules)
    for _ in range(1000):
        ask("6.6.6.6", ("lib/flood",))
    for i in range(3000):
        ask("6.6.6.6", ("lib/flood", f"lib/{i}"))
    top = [tuple(c["modules"]) for c in combos.top(5)]
    if per_client:
        assert sorted(top) == sorted(honest)
    else:
        assert top[0] == ("lib/flood",)
