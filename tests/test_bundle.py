"""The endpoint end to end: real app, real esbuild, bundles executed in Node."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.errors import BadRequest
from bundler.keys import SERVICE
from bundler.service import derived as service_module
from bundler.settings import Settings
from tests.conftest import EXAMPLES, run_in_node, wait_ready

HERO_CARD_PRICE = "components/price-tag,components/hero,components/card"


async def get_bundle(client: TestClient, query: str, **headers: str) -> tuple[int, bytes, Any]:
    resp = await client.get("/bundle.js?" + query, headers=headers)
    return resp.status, await resp.read(), resp.headers


async def test_bundle_registers_exactly_the_requested_modules(
    client: TestClient, tmp_path: Path
) -> None:
    status, code, headers = await get_bundle(client, f"modules={HERO_CARD_PRICE}&v=1.0.0")
    assert status == 200, code
    assert headers["Content-Type"] == "application/javascript; charset=utf-8"
    registry = "__bundlerModules"
    result = run_in_node(
        tmp_path,
        code,
        f"""({{
            names: Object.keys({registry}).sort(),
            price: {registry}["components/price-tag"].render({{price: 10, percentOff: 50}}),
            hero: {registry}["components/hero"].render({{title: "<Sale>"}}),
        }})""",
    )
    assert result["names"] == ["components/card", "components/hero", "components/price-tag"]
    assert "€5.00" in result["price"] and "<s>€10.00</s>" in result["price"]
    assert "&lt;Sale&gt;" in result["hero"] and 'data-version="1.0.0"' in result["hero"]


async def test_shared_helpers_are_included_once(client: TestClient) -> None:
    status, code, _ = await get_bundle(
        client, "modules=components/hero,components/footer,components/newsletter&v=1.0.0"
    )
    assert status == 200
    # All three import lib/i18n.js; its message table must appear once.
    assert code.count(b"Alle Rechte vorbehalten.") == 1


async def test_index_file_and_version_selection(client: TestClient, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        status, code, _ = await get_bundle(
            client, f"modules=components/banner,components/hero&v={version}"
        )
        assert status == 200
        html = run_in_node(
            tmp_path, code, '__bundlerModules["components/hero"].render({title: "x"})'
        )
        assert f'data-version="{version}"' in html


async def test_amd_loader_gets_define_calls(client: TestClient, tmp_path: Path) -> None:
    status, code, _ = await get_bundle(client, "modules=components/rating,components/tabs&v=1.1.0")
    assert status == 200
    setup = """
        var defined = {}, calls = [];
        function define(name, deps, factory) { calls.push([name, deps]); defined[name] = factory(); }
        define.amd = {};
    """
    result = run_in_node(
        tmp_path,
        code,
        '({calls, stars: defined["components/rating"].stars(3), '
        'tab: defined["components/tabs"].createTabs(3).select(7)})',
        setup,
    )
    assert result["calls"] == [["components/rating", []], ["components/tabs", []]]
    assert result["stars"] == "★★★☆☆"
    assert result["tab"] == 2


async def test_no_amd_calls_without_define_amd(client: TestClient, tmp_path: Path) -> None:
    _, code, _ = await get_bundle(client, "modules=components/rating&v=1.1.0")
    setup = "var calls = 0; function define() { calls++; }"  # a define without .amd
    assert run_in_node(tmp_path, code, "calls", setup) == 0


async def test_evaluation_order_is_canonical(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    (source / "9.0.0").mkdir(parents=True)
    for name in ("b", "a", "c"):
        (source / "9.0.0" / f"{name}.js").write_text(
            f'(globalThis.order ||= []).push("{name}"); export const id = "{name}";\n'
        )
    client = await aiohttp_client(
        create_app(make_settings(source=str(source), default_version="9.0.0"))
    )
    _, code, _ = await get_bundle(client, "modules=c,a,b")
    assert run_in_node(tmp_path, code, "order") == ["a", "b", "c"]


async def test_permutations_share_one_cache_entry_and_one_build(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
) -> None:
    wrapper, runs = counting_esbuild
    app = create_app(make_settings(esbuild=wrapper))
    client = await aiohttp_client(app)
    orders = [
        "components/hero,components/card,components/tabs",
        "components/tabs,components/hero,components/card",
        "components/card,components/tabs,components/hero,components/card",
    ]
    bodies = set()
    statuses = []
    for order in orders:
        status, body, headers = await get_bundle(client, f"modules={order}&v=1.1.0")
        assert status == 200
        bodies.add(body)
        statuses.append(headers["Cache-Status"])
    assert len(bodies) == 1
    # RFC 9211: built once, then hits.
    assert statuses == ["bundler; fwd=miss; stored", "bundler; hit", "bundler; hit"]
    assert app[SERVICE].tiers.memory.entries() == 1
    assert runs() == 1


async def test_concurrent_identical_cold_requests_run_esbuild_once(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
) -> None:
    wrapper, runs = counting_esbuild
    client = await aiohttp_client(create_app(make_settings(esbuild=wrapper)))
    results = await asyncio.gather(
        *(get_bundle(client, "modules=components/carousel,components/accordion") for _ in range(20))
    )
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, body, _ in results}) == 1
    assert runs() == 1


async def test_etag_and_conditional_get(client: TestClient) -> None:
    status, _, headers = await get_bundle(client, "modules=components/nav&v=1.1.0")
    assert status == 200
    etag = headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    resp = await client.get(
        "/bundle.js?modules=components/nav&v=1.1.0", headers={"If-None-Match": etag}
    )
    assert resp.status == 304
    assert await resp.read() == b""
    assert resp.headers["ETag"] == etag
    resp = await client.get(
        "/bundle.js?modules=components/nav&v=1.1.0", headers={"If-None-Match": '"stale"'}
    )
    assert resp.status == 200


async def test_cache_control_depends_on_pinned_version(client: TestClient) -> None:
    _, _, pinned = await get_bundle(client, "modules=components/nav&v=1.1.0")
    assert pinned["Cache-Control"] == "public, max-age=31536000, immutable"
    assert pinned["Vary"] == "Accept-Encoding"
    assert pinned["X-Bundle-Mode"] == "tailored"
    _, _, floating = await get_bundle(client, "modules=components/nav")
    assert floating["Cache-Control"] == "public, max-age=60"


async def test_gzip_when_accepted(client: TestClient) -> None:
    # auto_decompress off: we check the bytes on the wire.
    resp = await client.get(
        "/bundle.js?modules=components/card&v=1.1.0",
        headers={"Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert resp.headers["Content-Encoding"] == "gzip"
    zipped = await resp.read()
    _, plain, identity_headers = await get_bundle(
        client, "modules=components/card&v=1.1.0", **{"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in identity_headers
    assert gzip.decompress(zipped) == plain
    assert resp.headers["ETag"] != identity_headers["ETag"]


def count_gzips(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the bundles the service gzips from now on, one entry per gzip made."""
    made: list[int] = []
    real = service_module.gzip_body

    def counted(code: bytes) -> bytes:
        made.append(len(code))
        return real(code)

    monkeypatch.setattr(service_module, "gzip_body", counted)
    return made


async def test_gzip_is_made_on_the_first_request_for_it_and_only_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Browsers ask for brotli: a build makes no gzip form (at level 9 it cost more CPU
    than brotli, taken from esbuild in a storm); the first gzip request makes it, once,
    however many ask together (before, Bundle.create made one for every build)."""
    made = count_gzips(monkeypatch)
    for name in ("card", "nav", "hero"):
        status, _, headers = await get_bundle(
            client, f"modules=components/{name}&v=1.1.0", **{"Accept-Encoding": "br"}
        )
        assert status == 200 and headers["Content-Encoding"] == "br"
    assert made == []
    query = "/bundle.js?modules=components/card&v=1.1.0"
    responses = await asyncio.gather(
        *(
            client.get(query, headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
            for _ in range(5)
        )
    )
    bodies = {await resp.read() for resp in responses}
    assert len(made) == 1 and len(bodies) == 1
    assert {resp.headers["Content-Encoding"] for resp in responses} == {"gzip"}
    _, plain, _ = await get_bundle(client, "modules=components/card&v=1.1.0")
    assert gzip.decompress(bodies.pop()) == plain


async def test_a_gzip_request_arriving_as_the_gzip_is_handed_out_does_not_make_it_again(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gzip is kept before its flight ends: a request that arrives after the flight
    has ended but before its waiters have woken up finds it (it made a second one when
    the first waiter kept it on waking: a race seen once in four full test runs)."""
    made = count_gzips(monkeypatch)
    status, _, _ = await get_bundle(client, "modules=components/card&v=1.1.0")
    assert status == 200
    service = client.app[SERVICE]
    [bundle] = service.tiers.memory.bundles()  # the one bundle built
    first = asyncio.create_task(service.body(bundle, "gzip"))
    while not service.forms.gzipping(bundle):
        await asyncio.sleep(0)
    while service.forms.gzipping(bundle):  # until the flight ends
        await asyncio.sleep(0)
    assert not first.done()  # its waiter has not woken up yet
    second = await service.body(bundle, "gzip")
    assert await first == second
    assert len(made) == 1


async def test_broken_module_is_422_with_relative_paths(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "2.0.0")
    (source / "2.0.0" / "components" / "broken.js").write_text("export const x = ;\n")
    (source / "2.0.0" / "components" / "needs-missing.js").write_text(
        'import { y } from "../lib/missing.js";\nexport const x = y;\n'
    )
    client = await aiohttp_client(
        create_app(make_settings(source=str(source), default_version="2.0.0"))
    )
    for module, expected in (
        ("components/broken", "components/broken.js:1:17"),
        ("components/needs-missing", 'Could not resolve "../lib/missing.js"'),
    ):
        resp = await client.get(f"/bundle.js?modules=components/hero,{module}")
        text = await resp.text()
        assert resp.status == 422, text
        assert expected in text
        assert resp.headers["Cache-Control"] == "no-store"
        assert str(tmp_path) not in text and "/tmp" not in text and str(source) not in text


async def test_unknown_module_is_404_naming_it(client: TestClient, tmp_path: Path) -> None:
    resp = await client.get("/bundle.js?modules=components/hero,components/nope,lib/gone&v=1.0.0")
    text = await resp.text()
    assert resp.status == 404
    assert text.strip() == "unknown modules in version 1.0.0: components/nope, lib/gone"
    assert resp.headers["Cache-Control"] == "no-store"


async def test_module_new_in_a_version(client: TestClient) -> None:
    ok = await client.get("/bundle.js?modules=components/cookie-banner&v=1.1.0")
    assert ok.status == 200
    missing = await client.get("/bundle.js?modules=components/cookie-banner&v=1.0.0")
    assert missing.status == 404
    assert "components/cookie-banner" in await missing.text()


async def test_unknown_version_is_404(client: TestClient) -> None:
    resp = await client.get("/bundle.js?modules=components/hero&v=7.7.7")
    assert resp.status == 404
    assert "version '7.7.7' does not exist" in await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"


async def test_probes(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_memory_cache_stays_within_its_byte_bound(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    bound = 20_000  # a few bundles (code with its CSS, gzip, br; maps are made on request)
    app = create_app(make_settings(memory_cache_max_bytes=bound))
    client = await aiohttp_client(app)
    components = ["card", "carousel", "hero", "nav", "tabs", "rating", "footer", "accordion"]
    for i, name in enumerate(components):
        status, _, _ = await get_bundle(
            client, f"modules=components/{name},components/{components[i - 1]}"
        )
        assert status == 200
        cache = app[SERVICE].tiers.memory
        assert 0 < cache.stored_bytes() <= bound
    assert 1 < app[SERVICE].tiers.memory.entries() < len(components)  # some evicted, several kept


async def test_bare_import_resolving_outside_the_version_is_refused(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """esbuild walks up parent directories for node_modules; a version must not."""
    source = tmp_path / "src"
    (source / "node_modules" / "leaky").mkdir(parents=True)
    (source / "node_modules" / "leaky" / "index.js").write_text("export const leak = 1;\n")
    (source / "3.0.0").mkdir()
    (source / "3.0.0" / "a.js").write_text('export { leak } from "leaky";\n')
    client = await aiohttp_client(
        create_app(make_settings(source=str(source), default_version="3.0.0"))
    )
    resp = await client.get("/bundle.js?modules=a")
    text = await resp.text()
    assert resp.status == 422, text
    assert "not self-contained" in text and "node_modules/leaky/index.js" in text
    assert str(tmp_path) not in text


async def test_demo_page_and_loader_are_served(client: TestClient) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="loader.js"></script>' in await page.text()
    loader = await client.get("/loader.js")
    assert loader.headers["Content-Type"] == "application/javascript; charset=utf-8"
    assert "BundlerLoader" in await loader.text()


async def test_a_source_map_is_built_on_request_for_the_served_code(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
) -> None:
    wrapper, runs = counting_esbuild
    client = await aiohttp_client(create_app(make_settings(esbuild=wrapper)))
    await wait_ready(client)
    query = "modules=components/card,components/hero&v=1.1.0"  # canonical order
    resp = await client.get("/bundle.js?" + query)
    code = await resp.read()
    assert code.rstrip().endswith(b"//# sourceMappingURL=bundle.js.map?" + query.encode())
    assert runs() == 1  # the bundle alone: no map made
    maps = [await client.get("/bundle.js.map?" + query) for _ in range(3)]
    assert {m.status for m in maps} == {200}
    source_map = json.loads(await maps[0].read())
    assert runs() == 2  # one more run, once: then from memory
    assert "components/hero.js" in source_map["sources"]
    assert all(not s.startswith(("/", "..")) for s in source_map["sources"])
    # The map's generated side is the served code: its last mapped line exists there.
    assert source_map["mappings"].count(";") < len(code.splitlines())


async def test_a_query_seen_before_reuses_its_spec_and_cache_key(client: TestClient) -> None:
    """A warm hit does not make its cache key again (JSON and SHA-256 per request, the
    hot path's own cost): the same query gives the very same spec. Junk is not kept."""
    service = client.server.app[SERVICE]
    pairs = [("modules", "components/hero,lib/html"), ("v", "1.1.0")]
    first, pinned = await service.parse(pairs)
    again, _ = await service.parse(list(pairs))
    assert again is first and pinned
    assert first.key == again.key
    reordered, _ = await service.parse([("modules", "lib/html,components/hero"), ("v", "1.1.0")])
    assert reordered is not first and reordered.key == first.key  # same bundle
    for _ in range(2):
        with pytest.raises(BadRequest):
            await service.parse([("modules", "../etc/passwd")])


@pytest.mark.parametrize("look_again", [True, False], ids=["service", "naive"])
async def test_a_request_that_looks_in_the_disk_tier_meanwhile_does_not_build_again(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: tuple[str, Callable[[], int]],
    monkeypatch: pytest.MonkeyPatch,
    look_again: bool,
) -> None:
    """A second request for a key misses the memory tier while the first one's build is
    under way, then reads the disk tier slowly: when it comes back, that build has
    ended. It takes the bundle the build left in memory. Naive (not looking again):
    a second esbuild run of the same bundle (seen under load in a release's storm)."""
    wrapper, runs = counting_esbuild
    app = create_app(make_settings(esbuild=wrapper))
    client = await aiohttp_client(app)
    await wait_ready(client)
    service = app[SERVICE]
    if not look_again:
        monkeypatch.setattr(service.tiers.memory, "hit", lambda key: None)
    real_get = service.tiers.disk.get
    lookups = 0

    async def slow_disk_get(key: str) -> Any:
        nonlocal lookups
        lookups += 1
        mine = lookups
        found = await real_get(key)
        while mine == 2 and (runs() == before or key in service.flight):
            await asyncio.sleep(0.005)  # the other request's build ends meanwhile
        return found

    monkeypatch.setattr(service.tiers.disk, "get", slow_disk_get)
    query = "/bundle.js?modules=components/tabs&v=1.1.0"
    before = runs()
    first = asyncio.ensure_future(client.get(query))
    second = asyncio.ensure_future(client.get(query))
    assert (await first).status == 200
    assert (await second).status == 200
    assert runs() - before == (1 if look_again else 2)


async def test_a_tailored_bundle_knows_where_it_names_its_version(client: TestClient) -> None:
    """The build writes a mark where the bundle names its version (the registry record,
    the source map's URL), replaced before it is kept: the served bytes hold the version
    there and no mark anywhere, and its source map (a second run) matches it."""
    resp = await client.get("/bundle.js?modules=components/card,components/hero&v=1.1.0")
    code = await resp.read()
    assert resp.status == 200 and b"bundler-version" not in code
    [bundle] = client.app[SERVICE].tiers.memory.bundles()
    assert bundle.code == code and sorted(form for _, form in bundle.version_at) == [0, 1]
    assert all(code[at : at + 5] == b"1.1.0" for at, _ in bundle.version_at)
    source_map = await client.get("/bundle.js.map?modules=components/card,components/hero&v=1.1.0")
    assert source_map.status == 200 and b"bundler-version" not in await source_map.read()
