"""Core latency benchmark: one 5-module bundle, cold and warm, against esbuild by hand.

Also compares build pool shapes on this machine's CPUs: N single-threaded
esbuilds (GOMAXPROCS=1) against one multi-threaded esbuild, under a burst of
distinct cold bundles. Run with `make bench`; prints one table per part.

Every server is a real `python -m bundler serve` process on a free port with a
fresh data dir; requests are real HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.builder import Builder, BuildJob  # noqa: E402
from bundler.cpus import available_cpus  # noqa: E402
from bundler.entry import entry_source  # noqa: E402
from bundler.resolve import resolve_modules  # noqa: E402
from bundler.settings import Settings  # noqa: E402
from bundler.spec import BuildOptions, BundleSpec  # noqa: E402

VERSION = "1.1.0"
FIVE = (
    "components/card",
    "components/carousel",
    "components/hero",
    "components/nav",
    "components/tabs",
)
COMPONENTS = [
    "components/" + n
    for n in [
        "accordion",
        "banner",
        "card",
        "carousel",
        "cookie-banner",
        "countdown",
        "footer",
        "hero",
        "nav",
        "newsletter",
        "price-tag",
        "rating",
        "tabs",
    ]
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(*flags: str) -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bundler",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                data,
                # Every request waits for its own build: this measures building, not the fallback.
                "--fallback-budget-ms",
                "-1",
                "--build-queue-max",
                "-1",
                *flags,
            ],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    get(port, "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("server did not start") from None
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def get(port: int, path: str) -> float:
    """Seconds for one GET over a new connection, body read in full."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}")
    finally:
        conn.close()
    return time.perf_counter() - started


def bundle_path(modules: tuple[str, ...]) -> str:
    return f"/bundle.js?modules={','.join(modules)}&v={VERSION}"


def esbuild_by_hand(runs: int) -> list[float]:
    """The same command line the service runs, started by hand, same entry file."""
    settings = Settings()
    spec = BundleSpec(VERSION, FIVE, BuildOptions(settings.esbuild_target, settings.registry_name))
    source_root = Path(settings.source) / VERSION
    builder = Builder(
        settings.esbuild,
        Path(tempfile.gettempdir()),
        pool_size=1,
        threads_per_build=settings.threads_per_build,
        timeout_s=60,
        niceness=0,
    )
    env = {"PATH": os.environ["PATH"], "GOMAXPROCS": str(settings.threads_per_build)}
    times = []
    with tempfile.TemporaryDirectory() as work:
        entry = Path(work) / "entry.js"
        job = BuildJob.tailored(spec, resolve_modules(source_root, VERSION, spec.modules))
        entry.write_text(
            entry_source(
                job.registrations,
                source_root,
                settings.registry_name,
                version=VERSION,
                mode=job.mode,
            )
        )
        cmd = builder.command(entry, Path(work) / "bundle.js", job)
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, cwd=source_root, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    return times


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def part_latency(runs: int) -> None:
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(runs):
        with server() as port:
            cold.append(get(port, bundle_path(FIVE)))
            warm.extend(get(port, bundle_path(FIVE)) for _ in range(10))
    hand = esbuild_by_hand(runs * 3)
    hand_median = statistics.median(hand)
    print(f"\nOne 5-module bundle ({', '.join(m.split('/')[1] for m in FIVE)}), v={VERSION}")
    print(f"{'':28}{'median ms':>10}{'min ms':>10}{'runs':>6}{'vs by hand':>12}")
    for label, data in (
        ("esbuild by hand", hand),
        ("service, cold (build)", cold),
        ("service, warm (cache hit)", warm),
    ):
        ratio = statistics.median(data) / hand_median
        print(
            f"{label:28}{ms(statistics.median(data)):>10}{ms(min(data)):>10}{len(data):>6}{ratio:>11.2f}x"
        )


async def burst(port: int, combos: list[tuple[str, ...]]) -> tuple[float, list[float]]:
    async with aiohttp.ClientSession() as session:

        async def one(mods: tuple[str, ...]) -> float:
            started = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}{bundle_path(mods)}") as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            return time.perf_counter() - started

        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(c) for c in combos))
        return time.perf_counter() - started, list(latencies)


def part_pool_shapes(count: int, seed: int) -> None:
    cpus = available_cpus()
    rng = random.Random(seed)
    shapes = [(cpus, 1), (1, cpus)] if cpus > 1 else [(1, 1)]
    if cpus > 1:
        shapes.append((cpus, cpus))
    print(f"\nBurst of {count} distinct cold 5-module bundles at once, {cpus} CPUs")
    print(f"{'pool x GOMAXPROCS':20}{'builds/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for pool, threads in shapes:
        combos = [tuple(sorted(rng.sample(COMPONENTS, 5))) for _ in range(count)]
        with server("--build-pool-size", str(pool), "--build-threads", str(threads)) as port:
            wall, lat = asyncio.run(burst(port, combos))
        lat.sort()
        p95 = lat[int(0.95 * (len(lat) - 1))]
        print(
            f"{f'{pool} x {threads}':20}{count / wall:>10.1f}{ms(statistics.median(lat)):>10}"
            f"{ms(p95):>10}{ms(lat[-1]):>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="cold runs (each on a fresh server)")
    parser.add_argument("--burst", type=int, default=60, help="distinct bundles in the burst")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    part_latency(args.runs)
    part_pool_shapes(args.burst, args.seed)


if __name__ == "__main__":
    main()
