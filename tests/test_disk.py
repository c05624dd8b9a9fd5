"""The disk tier, compression, source maps and popular combinations."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.bundle import Bundle
from bundler.keys import SERVICE
from bundler.settings import Settings
from bundler.tiers.disk import CorruptEntry, DiskTier, decode_entry, encode_entry
from tests.conftest import NODE, ROOT, wait_ready

QUERY = "/bundle.js?modules=components/rating,components/hero,components/card&v=1.1.0"


async def restartable(
    aiohttp_client: Any, make_settings: Callable[..., Settings], **overrides: Any
) -> TestClient:
    client = await aiohttp_client(create_app(make_settings(**overrides)))
    await wait_ready(client)
    return client


async def drain_disk_writes(client: TestClient) -> None:
    await client.app[SERVICE].tiers.flush()


async def test_restart_serves_from_disk_without_esbuild(
    aiohttp_client: Any, make_settings: Callable[..., Settings], counting_esbuild: Any
) -> None:
    wrapper, runs = counting_esbuild
    first = await restartable(aiohttp_client, make_settings, esbuild=wrapper)
    body = await (await first.get(QUERY)).read()
    await drain_disk_writes(first)
    await first.close()
    assert runs() == 1
    second = await restartable(aiohttp_client, make_settings, esbuild=wrapper)
    resp = await second.get(QUERY)
    assert resp.headers["X-Bundle-Mode"] == "tailored"
    assert await resp.read() == body
    assert runs() == 1  # no esbuild after the restart
    assert second.app[SERVICE].tiers.lookups["disk_hit"] == 1


async def test_corrupt_entry_is_rebuilt_never_served(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    counting_esbuild: Any,
    tmp_path: Path,
) -> None:
    wrapper, runs = counting_esbuild
    first = await restartable(aiohttp_client, make_settings, esbuild=wrapper)
    good = await (await first.get(QUERY)).read()
    await drain_disk_writes(first)
    await first.close()
    [entry] = (tmp_path / "data" / "cache").rglob("*.bundle")
    raw = bytearray(entry.read_bytes())
    raw[-100] ^= 0xFF  # one flipped byte, in the source map part
    entry.write_bytes(bytes(raw))
    second = await restartable(aiohttp_client, make_settings, esbuild=wrapper)
    resp = await second.get(QUERY)
    assert await resp.read() == good
    assert runs() == 2  # rebuilt
    assert second.app[SERVICE].tiers.disk.corrupt == 1


def sample_bundle(key: str, size: int, seed: int) -> Bundle:
    rng = random.Random(seed)
    code = f"/*{key}*/".encode() + bytes(rng.randrange(32, 127) for _ in range(size))
    return Bundle.create(
        key, code, b'{"version":3}', version_at=((2, 0), (40, 1)), inputs=b'{"inputs":{}}'
    )


def test_every_truncation_and_flip_is_caught() -> None:
    bundle = sample_bundle("k" * 64, 3000, 1)
    raw = encode_entry(bundle)
    assert decode_entry(raw, bundle.key) == bundle
    rng = random.Random(2)
    for cut in [*rng.sample(range(len(raw)), 100), 0, len(raw) - 1]:
        with pytest.raises(CorruptEntry):
            decode_entry(raw[:cut], bundle.key)
    for position in rng.sample(range(len(raw)), 100):
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        try:
            decoded = decode_entry(bytes(flipped), bundle.key)
        except CorruptEntry:
            continue
        # A flip inside the header's JSON whitespace or etag prefix may parse; the parts may not change.
        assert (decoded.code, decoded.br) == (bundle.code, bundle.br)


def test_disk_tier_stays_within_its_byte_bound(tmp_path: Path) -> None:
    disk = DiskTier(tmp_path / "cache", max_bytes=60_000)
    disk.scan()
    for i in range(40):
        disk.write(sample_bundle(f"{i:064x}", 4000, i))
        on_disk = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*.bundle"))
        assert on_disk == disk.stored_bytes() <= 60_000
    assert disk.read(f"{39:064x}") is not None  # the newest stays
    assert disk.read(f"{0:064x}") is None  # the oldest went
    restarted = DiskTier(tmp_path / "cache", max_bytes=60_000)
    restarted.scan()
    assert restarted.stored_bytes() == disk.stored_bytes() and restarted.entries() == disk.entries()


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("br, gzip", "br"),
        ("gzip, deflate, br;q=0", "gzip"),
        ("gzip;q=0.5, br;q=0.4", "gzip"),
        ("identity", None),
        ("br;q=0, gzip;q=0", None),
        ("", None),
    ],
)
async def test_accept_encoding_negotiation(
    client: TestClient, accept: str, encoding: str | None
) -> None:
    plain = await (await client.get(QUERY, headers={"Accept-Encoding": "identity"})).read()
    resp = await client.get(QUERY, headers={"Accept-Encoding": accept}, auto_decompress=False)
    body = await resp.read()
    assert resp.headers.get("Content-Encoding") == encoding
    decode = {"br": brotli.decompress, "gzip": gzip.decompress, None: lambda b: b}[encoding]
    assert decode(body) == plain
    assert resp.headers["Vary"] == "Accept-Encoding"


MAP_CHECK = r"""
const { SourceMap } = require("module");
const [code, map, needle] = [process.argv[1], JSON.parse(process.argv[2]), process.argv[3]];
const lines = code.split("\n");
const line = lines.findIndex((l) => l.includes(needle));
const entry = new SourceMap(map).findEntry(line, lines[line].indexOf(needle));
process.stdout.write(JSON.stringify(entry));
"""


async def test_source_map_maps_back_to_the_source_file(client: TestClient) -> None:
    resp = await client.get(QUERY)
    code = (await resp.read()).decode()
    comment = code.rstrip().rsplit("\n", 1)[1]
    assert comment == (
        "//# sourceMappingURL=bundle.js.map?"
        "modules=components/card,components/hero,components/rating&v=1.1.0"
    )
    map_resp = await client.get("/" + comment.split("=", 1)[1])
    assert map_resp.status == 200
    assert map_resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    source_map = await map_resp.json()
    assert all(not s.startswith(("/", "..")) for s in source_map["sources"])
    map_text = json.dumps(source_map)
    assert str(ROOT) not in map_text and "/tmp/" not in map_text  # no machine paths at all
    assert NODE is not None
    for needle, source in (("☆", "components/rating.js"), ("hero__cta", "components/hero.js")):
        out = subprocess.run(
            [NODE, "-e", MAP_CHECK, "--", code, json.dumps(source_map), needle],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(out.stdout)["originalSource"] == source


async def test_combos_returns_the_most_requested_lists(
    aiohttp_client: Any, make_settings: Callable[..., Settings]
) -> None:
    """Counted in distinct clients (each request another, named by a trusted proxy)."""
    client = await restartable(aiohttp_client, make_settings, trusted_proxies="127.0.0.1")
    mix = [("components/hero,components/card", 12), ("components/nav", 7), ("components/tabs", 3)]
    rng = random.Random(5)
    requests = [q for q, n in mix for _ in range(n)] + [
        f"components/{c}" for c in ("footer", "rating")
    ]
    rng.shuffle(requests)
    for i, modules in enumerate(requests):
        order = modules.split(",")
        rng.shuffle(order)
        resp = await client.get(
            "/bundle.js?modules=" + ",".join(order), headers={"X-Forwarded-For": f"192.0.2.{i}"}
        )
        assert resp.status == 200
    body = await (await client.get("/combos?top=3")).json()
    assert body["combos"] == [
        {"modules": ["components/card", "components/hero"], "count": 12},
        {"modules": ["components/nav"], "count": 7},
        {"modules": ["components/tabs"], "count": 3},
    ]
    assert (await client.get("/combos?top=0")).status == 400
    await client.close()  # saved at shutdown, loaded at the next start
    again = await restartable(aiohttp_client, make_settings, trusted_proxies="127.0.0.1")
    body = await (await again.get("/combos?top=1")).json()
    assert body["combos"][0]["count"] == 12


WRITER = r"""
import random, sys
from pathlib import Path
from bundler.bundle import Bundle
from bundler.tiers.disk import DiskTier
disk = DiskTier(Path(sys.argv[1]), max_bytes=10**9)
disk.scan()
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    key = f"{rng.randrange(20):064x}"
    n = rng.randrange(10**6)
    code = (f"/*{key}:{n}*/" + "x" * rng.randrange(1000, 60000)).encode()
    disk.write(Bundle.create(key, code, b"{}"))
"""


@pytest.mark.slow
def test_sigkill_while_writing_never_leaves_a_servable_corrupt_entry(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    rng = random.Random(7)
    for run in range(100):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(run)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        try:
            child.wait(timeout=rng.uniform(0.001, 0.05))
        except subprocess.TimeoutExpired:
            child.kill()
        child.wait()
        child.stdout.close()
    disk = DiskTier(root, max_bytes=10**9)
    disk.scan()  # also drops leftover temp files
    assert not [f for f in root.rglob(".*") if f.is_file()]
    served = 0
    for key in [f"{i:064x}" for i in range(20)]:
        bundle = disk.read(key)
        if bundle is not None:
            served += 1
            assert bundle.code.startswith(f"/*{key}:".encode())
            assert bundle.code == brotli.decompress(bundle.br)
    assert served > 0
    assert disk.corrupt == 0  # atomic replace: a torn file never even reaches its name


async def test_a_disk_slower_than_the_builds_never_holds_a_growing_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Builds outpace a slow disk's fsyncs (217 bundles/s against ~100 writes/s seen): the
    bundles queued for the writer are bounded in bytes; past it a write is skipped and
    counted (the memory tier still has the bundle). Naive: every write queued, each
    holding its bundle in memory until the disk gets to it. The disk is made slow by
    holding the writer thread, which a real disk cannot be made to do on cue."""
    import bundler.tiers.disk

    monkeypatch.setattr(bundler.tiers.disk, "MAX_PENDING_BYTES", 300_000)
    disk = DiskTier(tmp_path / "cache", max_bytes=10**9)
    gate = threading.Event()
    real_write = disk.write

    def slow_write(bundle: Bundle) -> None:
        gate.wait(10)
        real_write(bundle)

    monkeypatch.setattr(disk, "write", slow_write)
    bundles = [sample_bundle(f"{i:064x}", 50_000, i) for i in range(20)]
    puts = [asyncio.ensure_future(disk.put(b)) for b in bundles]
    await asyncio.sleep(0.1)
    queued = sum(not p.done() for p in puts)
    assert disk.skipped == len(bundles) - queued and disk.skipped > 0
    assert sum(b.size for b in bundles[:queued]) <= 300_000 or queued == 1
    gate.set()
    await asyncio.gather(*puts)
    assert disk.entries() == queued and disk.pending_bytes == 0
    await disk.put(bundles[-1])  # room again: written
    assert disk.entries() == queued + 1
    await disk.close()
