"""The flood benchmark: one client takes what it can while honest clients go on.

One `bundler serve` of lodash-es (its npm tarball, from a loopback artifact server) with
its defaults, run twice side by side: client limits on (the defaults) and off
(`--client-requests-per-s 0 --client-builds-per-s 0`). In each run, for 20 s:

- the flood, from 127.0.0.2, 32 connections as fast as it can, in its own process
  (niced: its CPU stands for another machine's): distinct valid combinations of 3-12
  modules (`distinct`), or a few dozen combinations over and over (`repeat`: hits);
- honest pages (a), from 127.0.1.1-40 in turn (many clients, as popular pages are): one
  of 20 cached combinations every 100 ms;
- honest client (b), from 127.0.0.4: a new, cold combination every second.

Before it, (a) and (b) alone for as long give the unloaded latency: the flood's cost is
what it adds to honest traffic. A warm answer's `Cache-Status` (hit, or fwd=miss: it was
built) tells whether the flood evicted what honest pages use; `--tiers small` runs with
a memory and a disk tier a few hundred bundles big, where eviction shows. Afterwards:
/combos top 20 against the flood's combinations, and the limits' metrics.
`make bench-flood`; `--floods distinct,repeat`, `--tiers default,small`, `--duration`,
`--flood-addresses N` (the flood spread over N clients, each under its own limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_storm as storm

ROOT = Path(__file__).resolve().parent.parent
CORPUS = storm.CORPORA["lodash-es"]
FLOOD, COLD_CLIENT = "127.0.0.2", "127.0.0.4"
WARM_CLIENTS = [f"127.0.1.{n}" for n in range(1, 41)]
LIMITS_OFF = ["--client-requests-per-s", "0", "--client-builds-per-s", "0"]
# A few hundred lodash-es bundles (about 10-30 KB each, plain and brotli) per tier.
SMALL_TIERS = ["--memory-cache-max-bytes", str(4 << 20), "--disk-cache-max-bytes", str(8 << 20)]


def session_from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(address, 0), limit=0),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def ask(session: aiohttp.ClientSession, url: str, modules: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with session.get(f"{url}/bundle.js?modules={','.join(modules)}") as resp:
            await resp.read()
            mode = resp.headers.get("X-Bundle-Mode", "-")
            hit = resp.headers.get("Cache-Status", "").endswith("; hit")
            return {
                "status": resp.status,
                "mode": mode,
                "hit": hit,
                "s": time.perf_counter() - started,
            }
    except (aiohttp.ClientError, TimeoutError):
        return {"status": 0, "mode": "-", "hit": False, "s": time.perf_counter() - started}


def flood_addresses(count: int) -> list[str]:
    """One address (FLOOD), or ``count`` of them (127.0.2.1 and on): a flood spread
    over many clients, each under its own limits, as a botnet's would be."""
    return [FLOOD] if count == 1 else [f"127.0.2.{n}" for n in range(1, count + 1)]


async def flood_role(
    url: str, combos_file: Path, out: Path, duration_s: float, addresses: int
) -> None:
    combos = json.loads(combos_file.read_text())
    counts: dict[str, int] = {}
    deadline = time.monotonic() + duration_s
    sessions = [session_from(address) for address in flood_addresses(addresses)]

    async def worker(n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            got = await ask(sessions[n % len(sessions)], url, combos[i % len(combos)])
            key = f"{got['status']} {got['mode']}"
            counts[key] = counts.get(key, 0) + 1
            i += 32

    try:
        await asyncio.gather(*(worker(n) for n in range(32)))
    finally:
        for session in sessions:
            await session.close()
    out.write_text(json.dumps(counts))


async def every(
    url: str, addresses: list[str], period_s: float, duration_s: float, pick: Any, spread: int = 1
) -> list[dict[str, Any]]:
    """One request every ``period_s``, from each of ``addresses`` in turn, ``spread``
    requests each."""
    results = []
    sessions = [session_from(address) for address in addresses]
    try:
        start = time.monotonic()
        n = 0
        while time.monotonic() < start + duration_s:
            session = sessions[(n // spread) % len(sessions)]
            got = await ask(session, url, pick(n))
            got["at"] = time.monotonic() - start
            results.append(got)
            n += 1
            await asyncio.sleep(max(0.0, start + n * period_s - time.monotonic()))
    finally:
        for session in sessions:
            await session.close()
    return results


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def run(label: str, flood: str, flags: list[str], artifact_url: str, args: argparse.Namespace) -> dict[str, str]:  # fmt: skip
    rng = random.Random(args.seed)
    combos = storm.make_combos(CORPUS, 6000, args.seed)
    popular, cold_alone, cold_combos = combos[:20], combos[20:100], combos[100:200]
    flood_pool = combos[200:]
    if flood == "repeat":
        flood_pool = flood_pool[:36]
    rng.shuffle(flood_pool)
    port = storm.free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as work:
        work_dir = Path(work)
        log = (work_dir / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port),
             "--data-dir", str(work_dir / "data"), *storm.source_flags(CORPUS, artifact_url),
             "--default-version", CORPUS.release, "--log-level", "WARNING", *flags],
            cwd=ROOT, stderr=log,
        )  # fmt: skip
        try:
            storm.wait_ready(url, server)
            combos_file = work_dir / "flood.json"
            combos_file.write_text(json.dumps(flood_pool))

            async def measure() -> dict[str, Any]:
                async with session_from(COLD_CLIENT) as s:
                    for combo in popular:  # built once: cached from now on
                        await ask(s, url, combo)
                alone, cold_before = await asyncio.gather(
                    every(url, WARM_CLIENTS, 0.1, args.duration, lambda n: popular[n % 20], 20),
                    every(url, [COLD_CLIENT], 1.0, args.duration, lambda n: cold_alone[n]),
                )
                flooder = subprocess.Popen(  # noqa: ASYNC220 (started once, not awaited)
                    [sys.executable, __file__, "--role", "flood", "--url", url,
                     "--combos-file", str(combos_file), "--out", str(work_dir / "flood-out.json"),
                     "--duration", str(args.duration), "--flood-addresses", str(args.flood_addresses)],
                    preexec_fn=lambda: os.nice(19),
                )  # fmt: skip
                warm, cold = await asyncio.gather(
                    every(url, WARM_CLIENTS, 0.1, args.duration, lambda n: popular[n % 20], 20),
                    every(url, [COLD_CLIENT], 1.0, args.duration, lambda n: cold_combos[n]),
                )
                await asyncio.to_thread(flooder.wait)
                return {"alone": alone, "cold alone": cold_before, "warm": warm, "cold": cold}

            got = asyncio.run(measure())
            flood_counts = json.loads((work_dir / "flood-out.json").read_text())
            with urllib.request.urlopen(url + "/combos?top=20", timeout=10) as resp:
                top = [tuple(c["modules"]) for c in json.loads(resp.read())["combos"]]
            flooded = {tuple(sorted(c)) for c in flood_pool}
            limited = {
                reason: storm.labelled(url, "bundler_limited_total", {"reason": reason}) or 0
                for reason in ("requests", "builds")
            }
        finally:
            server.kill()
            server.wait()
            log.close()
    if os.environ.get("FLOOD_DEBUG"):
        worst = sorted(got["warm"], key=lambda r: -r["s"])[:8]
        print(label, [(round(r["at"], 2), round(r["s"] * 1000, 1)) for r in worst], file=sys.stderr)
    everything = [r for results in got.values() for r in results]
    cold, warm, alone = got["cold"], got["warm"], got["alone"]
    total_flood = sum(flood_counts.values())
    return {
        "honest warm, no flood: p50 / p99 ms": f"{pct([r['s'] for r in alone], 0.5):.1f} / {pct([r['s'] for r in alone], 0.99):.1f}",
        "honest warm p50 / p99 ms": f"{pct([r['s'] for r in warm], 0.5):.1f} / {pct([r['s'] for r in warm], 0.99):.1f}",
        "honest warm p99 vs no flood": f"{pct([r['s'] for r in warm], 0.99) / pct([r['s'] for r in alone], 0.99):.2f} x",
        "honest warm hits (no flood: all)": f"{sum(r['hit'] for r in warm)} of {len(warm)} ({sum(r['hit'] for r in alone)} of {len(alone)})",
        "honest cold TTFB p50 / p99 ms": f"{pct([r['s'] for r in cold], 0.5):.0f} / {pct([r['s'] for r in cold], 0.99):.0f}",
        "honest cold tailored": f"{sum(r['mode'] == 'tailored' for r in cold)} of {len(cold)}",
        "honest 5xx / not 200": f"{sum(r['status'] >= 500 for r in everything)} / {sum(r['status'] != 200 for r in everything)}",
        "flood requests (per s)": f"{total_flood} ({total_flood / args.duration:.0f})",
        "flood tailored / fallback / 429": f"{flood_counts.get('200 tailored', 0)} / {flood_counts.get('200 fallback', 0)} / {sum(n for k, n in flood_counts.items() if k.startswith('429'))}",
        "flood 5xx / failed": f"{sum(n for k, n in flood_counts.items() if k[0] == '5')} / {flood_counts.get('0 -', 0)}",
        "limited: requests / builds": f"{limited['requests']:.0f} / {limited['builds']:.0f}",
        "/combos top 20: the flood's": f"{sum(c in flooded for c in top)} of {len(top)}",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--role", choices=["flood"])
    parser.add_argument("--url")
    parser.add_argument("--combos-file", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--floods", default="distinct,repeat")
    parser.add_argument("--tiers", choices=["default", "small"], default="default")
    parser.add_argument(
        "--flood-addresses", type=int, default=1, help="spread the flood over this many (1-32)"
    )
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.role == "flood":
        asyncio.run(
            flood_role(args.url, args.combos_file, args.out, args.duration, args.flood_addresses)
        )
        return
    storm.ensure_corpus(CORPUS)
    with storm.artifact_server(storm.free_port()) as artifact_url:
        for flood in args.floods.split(","):
            columns = {}
            tier_flags = SMALL_TIERS if args.tiers == "small" else []
            for label, flags in (("limits off", LIMITS_OFF), ("limits on", [])):
                print(f"  {flood} flood, {label} ...", file=sys.stderr)
                columns[label] = run(label, flood, flags + tier_flags, artifact_url, args)
            tiers = " (tiers: memory 4 MB, disk 8 MB)" if args.tiers == "small" else ""
            spread = flood_addresses(args.flood_addresses)
            who = (
                f"one client from {FLOOD}"
                if len(spread) == 1
                else f"{len(spread)} clients ({spread[0]}-{spread[-1]})"
            )
            print(
                f"\nFlood ({flood}){tiers}: lodash-es {CORPUS.release}, {who} with 32 "
                f"connections for {args.duration:g} s; honest pages from 40 addresses (one of "
                f"20 cached combinations every 100 ms) and {COLD_CLIENT} (a new one every s)"
            )
            rows = list(next(iter(columns.values())))
            print(f"{'':40}" + "".join(f"{c:>24}" for c in columns))
            for row in rows:
                print(f"{row:40}" + "".join(f"{columns[c][row]:>24}" for c in columns))


if __name__ == "__main__":
    main()
