"""Core benchmark, one table per part (run with `make bench`):

1. one 5-module bundle, cold and warm, against esbuild by hand; the same for a page's
   8 lodash-es functions (the real package's npm tarball, served by a local HTTP server);
   the module form (/bundle.mjs) of both against the classic one and against esbuild by
   hand with --format=esm (bench_esm.py); and five components that bring CSS against
   five that bring none;
2. warm hits: the service's CPU per request against a bare aiohttp handler serving
   the same bytes with the same headers (capacity = the inverse);
3. a burst of distinct cold bundles: the service's build rate against esbuild alone
   (the same bundles, one esbuild per bundle, as many at once as the pool), and
   pool shapes (N single-threaded esbuilds against one multi-threaded one);
4. memory: RSS minus the memory tier's bound while 20,000 distinct bundles are built.

Every server is a real `python -m bundler serve` process on a free port with a
fresh data dir; requests are real HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bundler.build.builder import Builder  # noqa: E402
from bundler.build.jobs import BuildJob  # noqa: E402
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
# A real page's pick of lodash-es (bench-storm's corpus).
LODASH_PAGE = ("cloneDeep", "debounce", "get", "groupBy", "merge", "sortBy", "throttle", "uniqBy")
# What other pages asked the server for before (the warm-ups of a cold measurement).
LODASH_OTHERS = ("chunk", "filter", "map", "reduce", "pick", "omit", "flatten", "range", "zip")
# A cold build is measured on a server that has built this many other bundles.
WARM_UPS = 10
LIB = [f"lib/{n}" for n in ("events", "format", "html", "i18n", "time", "version")]
# A bare aiohttp server answering every GET with one body and fixed headers.
BARE_SERVER = """
import json, sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
headers = json.loads(sys.argv[3])
async def handle(request):
    return web.Response(body=body, headers=headers)
app = web.Application()
app.router.add_get("/{tail:.*}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""
# Of the 1.1.0 examples, these bring CSS (hero also an SVG) and these none.
WITH_CSS = tuple(f"components/{n}" for n in ("card", "footer", "hero", "nav", "rating"))
NO_CSS = tuple(
    f"components/{n}" for n in ("accordion", "banner", "countdown", "newsletter", "tabs")
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
    with served(*flags) as (port, _):
        yield port


@contextmanager
def served(*flags: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
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
                # One load process, one address: a client's limits are bench_flood's.
                "--client-requests-per-s",
                "0",
                "--client-builds-per-s",
                "0",
                *flags,
            ],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    get(port, "/readyz")  # started, its fallback loaded: idle
                    break
                except (OSError, RuntimeError):  # not listening yet, or not ready
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("server did not start") from None
                    time.sleep(0.05)
            yield port, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:  # still draining writes: the bench is done
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [
        int(c) for p in Path(f"/proc/{pid}/task").glob("*/children") for c in p.read_text().split()
    ]


def wait_idle(pid: int, timeout_s: float = 60) -> None:
    """Until ``pid`` and its children (its long-lived esbuilds) used under 5 ms of CPU in
    0.2 s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        family = [pid, *children(pid)]
        before = sum(cpu_seconds(p) for p in family)
        time.sleep(0.2)
        with contextlib.suppress(FileNotFoundError):
            if sum(cpu_seconds(p) for p in family) - before < 0.005:
                return
    raise RuntimeError("the server did not go idle")


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


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


def bundle_path(modules: tuple[str, ...], version: str = VERSION, module: bool = False) -> str:
    path = "bundle.mjs" if module else "bundle.js"
    return f"/{path}?modules={','.join(modules)}&v={version}"


def by_hand_command(
    work: Path,
    modules: tuple[str, ...],
    source_root: Path | None = None,
    version: str = VERSION,
    module: bool = False,
) -> tuple[list[str], Path]:
    """The command line the service runs for ``modules`` (one bundle, without its map,
    as tailored bundles are built), with its entry file written in ``work``; ``module``:
    the module form's (--format=esm, its target, its entry)."""
    settings = Settings()
    target = settings.esm_target if module else settings.esbuild_target
    options = BuildOptions(target, settings.registry_name, format="esm" if module else "iife")
    spec = BundleSpec(version, modules, options)
    source_root = source_root or Path(settings.source) / version
    builder = Builder(
        settings.esbuild,
        Path(tempfile.gettempdir()),
        pool_size=1,
        threads_per_build=1,
        timeout_s=60,
        niceness=0,
    )
    work.mkdir(parents=True, exist_ok=True)
    entry = work / "entry.js"
    job = BuildJob.tailored(spec, resolve_modules(source_root, version, spec.modules))
    entry.write_text(
        entry_source(
            job.registrations,
            source_root,
            settings.registry_name,
            version=version,
            mode=job.mode,
            module=module,
        )
    )
    return builder.command(entry, work / "bundle.js", job), source_root


def esbuild_by_hand(
    runs: int,
    threads: int = 1,
    modules: tuple[str, ...] = FIVE,
    source_root: Path | None = None,
    version: str = VERSION,
    module: bool = False,
) -> list[float]:
    """The same command line the service runs, started by hand, same entry file, with
    ``threads`` (GOMAXPROCS; 0: esbuild's default, every CPU)."""
    env = {"PATH": os.environ["PATH"]}
    if threads:
        env["GOMAXPROCS"] = str(threads)
    times = []
    with tempfile.TemporaryDirectory() as work:
        cmd, root = by_hand_command(Path(work), modules, source_root, version, module)
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - started)
    return times


async def esbuild_alone(combos: list[tuple[str, ...]], pool: int) -> float:
    """Wall seconds to build ``combos`` with esbuild alone: one process per bundle, at
    most ``pool`` at once (single-threaded, as the service's pool), entries ready."""
    env = {"PATH": os.environ["PATH"], "GOMAXPROCS": "1"}
    with tempfile.TemporaryDirectory() as work:
        commands = [by_hand_command(Path(work) / str(i), c) for i, c in enumerate(combos)]
        room = asyncio.Semaphore(pool)

        async def one(cmd: list[str], cwd: Path) -> None:
            async with room:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL
                )
                if await proc.wait() != 0:
                    raise RuntimeError("esbuild failed")

        started = time.perf_counter()
        await asyncio.gather(*(one(cmd, cwd) for cmd, cwd in commands))
        return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def warm_ups(
    names: Sequence[str], combo: tuple[str, ...], count: int = WARM_UPS
) -> list[tuple[str, ...]]:
    """``count`` distinct bundles of 3 of ``names``, none of them ``combo``."""
    rng = random.Random(7)
    picked: set[tuple[str, ...]] = set()
    while len(picked) < count:
        other = tuple(sorted(rng.sample(list(names), 3)))
        if other != combo:
            picked.add(other)
    return sorted(picked)


def cold_and_warm(
    combo: tuple[str, ...],
    runs: int,
    before: list[tuple[str, ...]],
    flags: tuple[str, ...] = (),
    version: str = VERSION,
    between: Callable[[], None] = lambda: None,
    module: bool = False,
) -> tuple[list[float], list[float]]:
    """``combo`` built on ``runs`` fresh, ready servers, each a server that has been at
    work: ``before`` built first (the first builds of a process warm its threads, caches
    and esbuild's runtime), then idle; then 10 hits. ``between`` runs after each server
    (the by-hand measurements, so that both sides see the same moments of a shared machine)."""
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(runs):
        with served(*flags) as (port, proc):
            for other in before:
                get(port, bundle_path(other, version))
            wait_idle(proc.pid)  # ready with its fallback's first part; the rest builds now
            cold.append(get(port, bundle_path(combo, version, module)))
            warm.extend(get(port, bundle_path(combo, version, module)) for _ in range(10))
        between()
    return cold, warm


def part_css(runs: int) -> None:
    """What a bundle's CSS costs: five components that bring CSS (one an SVG) against
    five that bring none, cold and warm."""
    print("\nCSS: five components with CSS against five without, v=1.1.0")
    print(f"{'':34}{'cold ms':>9}{'warm ms':>9}{'bytes':>8}{'br bytes':>10}")
    for label, combo in (
        ("five without CSS", NO_CSS),
        ("five with CSS (hero: an SVG too)", WITH_CSS),
    ):
        cold, warm = cold_and_warm(combo, runs, warm_ups(COMPONENTS, combo))
        with server() as port:
            plain = urllib.request.urlopen(f"http://127.0.0.1:{port}{bundle_path(combo)}").read()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{bundle_path(combo)}", headers={"Accept-Encoding": "br"}
            )
            compressed = urllib.request.urlopen(request).read()
        print(
            f"{label[:34]:34}{ms(statistics.median(cold)):>9}{ms(statistics.median(warm)):>9}"
            f"{len(plain):>8}{len(compressed):>10}"
        )


def part_latency(runs: int) -> None:
    # A build that starts alone uses every CPU (as esbuild by hand does by default);
    # under load each gets one, the pool's share.
    hand_all: list[float] = []
    hand_one: list[float] = []

    def by_hand() -> None:
        hand_all.extend(esbuild_by_hand(3, threads=0))
        hand_one.extend(esbuild_by_hand(3, threads=1))

    cold, warm = cold_and_warm(FIVE, runs, warm_ups(COMPONENTS + LIB, FIVE), between=by_hand)
    title = f"One 5-module bundle ({', '.join(m.split('/')[1] for m in FIVE)}), v={VERSION}"
    latency_table(title, hand_all, hand_one, cold, warm)


def part_real_latency(runs: int) -> None:
    """The same on a real package: a page's 8 lodash-es functions, served from its npm
    tarball (npm pack, cached in bench/.cache) by a local HTTP server, as in bench-storm."""
    from bench_storm import CACHE, CORPORA, artifact_server, ensure_corpus, source_flags

    corpus = CORPORA["lodash-es"]
    version = corpus.release
    ensure_corpus(corpus)
    hand_all: list[float] = []
    hand_one: list[float] = []
    with (
        artifact_server(free_port()) as artifact_url,
        tempfile.TemporaryDirectory() as unpacked,
    ):
        with tarfile.open(CACHE / f"{corpus.package}-{version}.tgz") as tar:
            tar.extractall(unpacked, filter="data")
        root = Path(unpacked) / "package"

        def by_hand() -> None:
            hand_all.extend(esbuild_by_hand(3, 0, LODASH_PAGE, root, version))
            hand_one.extend(esbuild_by_hand(3, 1, LODASH_PAGE, root, version))

        flags = (*source_flags(corpus, artifact_url), "--default-version", version)
        before = warm_ups(LODASH_OTHERS, LODASH_PAGE)
        cold, warm = cold_and_warm(LODASH_PAGE, runs, before, flags, version, by_hand)
    title = f"A page's 8 lodash-es functions ({', '.join(LODASH_PAGE)}), v={version}"
    latency_table(title, hand_all, hand_one, cold, warm)


def latency_table(
    title: str, hand_all: list[float], hand_one: list[float], cold: list[float], warm: list[float]
) -> None:
    by_all, by_one = statistics.median(hand_all), statistics.median(hand_one)
    print(f"\n{title}")
    print(f"{'':32}{'median ms':>10}{'min ms':>10}{'runs':>6}{'vs by hand':>12}{'vs 1 CPU':>10}")
    for label, data in (
        ("esbuild by hand, every CPU", hand_all),
        ("esbuild by hand, 1 CPU", hand_one),
        ("service, cold (build)", cold),
        ("service, warm (cache hit)", warm),
    ):
        median = statistics.median(data)
        print(
            f"{label:32}{ms(median):>10}{ms(min(data)):>10}{len(data):>6}"
            f"{median / by_all:>11.2f}x{median / by_one:>9.2f}x"
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


async def hammer(url: str, requests: int, connections: int) -> float:
    """``requests`` GETs of ``url`` over ``connections`` keep-alive connections, as a
    browser asks (brotli); returns the wall seconds."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        headers={"Accept-Encoding": "gzip, deflate, br"},
        auto_decompress=False,
    ) as session:
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - started


def part_warm_hits(requests: int, connections: int = 8) -> None:
    """The service's own work on a cache hit, against a bare aiohttp handler serving the
    same bytes and headers: CPU per request, taken from each server process."""
    rows = []
    # As in production (JSON lines, one per request), and without the access log.
    variants = [
        ("service, access log on", ("--log-format", "json")),
        ("service, access log off", ("--access-log", "off")),
    ]
    with tempfile.TemporaryDirectory() as work:
        for label, flags in variants:
            with served(*flags) as (port, proc):
                url = f"http://127.0.0.1:{port}{bundle_path(FIVE)}"
                request = urllib.request.Request(url, headers={"Accept-Encoding": "br"})
                with urllib.request.urlopen(request) as resp:
                    body = resp.read()
                    keep = ("Content-Type", "Content-Encoding", "ETag", "Vary", "Cache-Control")
                    headers = {k: resp.headers[k] for k in keep if resp.headers.get(k)}
                    headers["X-Bundle-Mode"] = resp.headers["X-Bundle-Mode"]
                asyncio.run(hammer(url, 500, connections))  # warm-up
                before = cpu_seconds(proc.pid)
                wall = asyncio.run(hammer(url, requests, connections))
                rows.append((label, wall, cpu_seconds(proc.pid) - before))
        body_file = Path(work) / "body"
        body_file.write_bytes(body)
        bare_port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, str(bare_port), str(body_file), json.dumps(headers)]
        )
        try:
            bare_url = f"http://127.0.0.1:{bare_port}{bundle_path(FIVE)}"
            deadline = time.monotonic() + 10
            while True:
                try:
                    get(bare_port, "/")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            asyncio.run(hammer(bare_url, 500, connections))
            before = cpu_seconds(bare.pid)
            wall = asyncio.run(hammer(bare_url, requests, connections))
            rows.append(("bare aiohttp, same bytes", wall, cpu_seconds(bare.pid) - before))
        finally:
            bare.terminate()
            bare.wait()
    print(
        f"\nWarm hits: {requests} GETs of one 5-module bundle ({len(body)} B brotli), "
        f"{connections} keep-alive connections"
    )
    print(f"{'':28}{'req/s':>10}{'CPU us/req':>12}{'capacity vs bare':>18}")
    bare_cpu = rows[-1][2] / requests
    for label, wall, cpu in rows:
        per = cpu / requests
        print(f"{label:28}{requests / wall:>10.0f}{per * 1e6:>12.0f}{bare_cpu / per:>17.2f}x")


def part_build_rate(count: int, seed: int) -> None:
    """Distinct cold bundles at once: the service (defaults) against esbuild alone."""
    cpus = available_cpus()
    rng = random.Random(seed)
    combos = list({tuple(sorted(rng.sample(COMPONENTS, 5))) for _ in range(count * 3)})[:count]
    alone = asyncio.run(esbuild_alone(combos, cpus))
    with server("--build-pool-size", str(cpus), "--build-threads", "1") as port:
        wall, _ = asyncio.run(burst(port, combos))
    print(f"\nBuild rate: {len(combos)} distinct cold 5-module bundles at once, {cpus} CPUs")
    print(f"{'':40}{'builds/s':>10}{'vs alone':>10}")
    print(f"{f'esbuild alone ({cpus} at once, 1 each)':40}{len(combos) / alone:>10.1f}{1:>9.2f}x")
    print(f"{'service (batched)':40}{len(combos) / wall:>10.1f}{alone / wall:>9.2f}x")


def part_memory(builds: int, bound_mib: int, seed: int) -> None:
    """RSS minus the memory tier's bound while ``builds`` distinct bundles are built."""
    rng = random.Random(seed)
    modules = COMPONENTS + LIB
    seen: set[tuple[str, ...]] = set()
    while len(seen) < builds:
        seen.add(tuple(sorted(rng.sample(modules, rng.randint(3, 9)))))
    combos = sorted(seen)
    rng.shuffle(combos)
    step = max(1, builds // 10)
    samples: list[tuple[int, float, float]] = []

    def sample(done: int, pid: int) -> tuple[int, float, float]:
        esbuilds = 0.0
        for child in children(pid):
            with contextlib.suppress(FileNotFoundError, RuntimeError):
                esbuilds += rss_mib(child)
        return done, rss_mib(pid), esbuilds

    with served("--memory-cache-max-bytes", str(bound_mib * 1024 * 1024)) as (port, proc):
        samples.append(sample(0, proc.pid))

        async def run() -> None:
            room = asyncio.Semaphore(64)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

                async def one(mods: tuple[str, ...]) -> None:
                    url = f"http://127.0.0.1:{port}{bundle_path(mods)}"
                    async with room, session.get(url) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}")

                for start in range(0, builds, step):
                    chunk = combos[start : start + step]
                    await asyncio.gather(*(one(c) for c in chunk))
                    samples.append(sample(start + len(chunk), proc.pid))

        started = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - started
    print(
        f"\nMemory: {builds} distinct bundles built ({builds / wall:.0f}/s), "
        f"memory tier bound {bound_mib} MiB"
    )
    print(f"{'builds':>8}{'RSS MiB':>10}{'RSS - bound':>13}{'esbuild RSS MiB':>17}")
    for done, rss, esbuilds in samples:
        print(f"{done:>8}{rss:>10.0f}{rss - bound_mib:>13.0f}{esbuilds:>17.0f}")
    tail = [rss for done, rss, _ in samples if done >= builds // 2]
    print(f"second half: RSS {min(tail):.0f} to {max(tail):.0f} MiB (flat if close)")


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
    parser.add_argument("--hits", type=int, default=5000, help="warm-hit GETs per server")
    parser.add_argument("--rate-builds", type=int, default=300, help="bundles in the rate burst")
    parser.add_argument("--rss-builds", type=int, default=20000)
    parser.add_argument("--rss-bound-mib", type=int, default=32)
    parser.add_argument(
        "--parts",
        default="latency,real,esm,css,hits,rate,pools,memory",
        help="comma-separated parts to run",
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "latency" in parts:
        part_latency(args.runs)
    if "real" in parts:
        part_real_latency(args.runs)
    if "esm" in parts:
        from bench_esm import part_esm

        part_esm(args.runs)
    if "css" in parts:
        part_css(args.runs)
    if "hits" in parts:
        part_warm_hits(args.hits)
    if "rate" in parts:
        part_build_rate(args.rate_builds, args.seed)
    if "pools" in parts:
        part_pool_shapes(args.burst, args.seed)
    if "memory" in parts:
        part_memory(args.rss_builds, args.rss_bound_mib, args.seed)


if __name__ == "__main__":
    main()
