"""The release-storm benchmark: a new version's cold burst, tuned service vs the naive one.

Corpora, real npm packages of three shapes (`npm pack`, cached in bench/.cache/),
served as version tarballs by a local HTTP server (python -m http.server, its
own process): lodash-es (650 small ES modules) and date-fns (5,300 files: ES
modules, CommonJS copies, declaration files, 90 locales, and a test helper that
imports a file the package does not ship); and rxjs, whose modules import its
dependency tslib, served as an npm source: the same server holds a static npm
registry (packuments and tarballs as files, tests/registry.py) and the service's
npm client installs each version with its dependencies from it. The service (its own process) is
warm on the older release; then the newer one is "released": requests for it arrive
open-loop at --rate per second for --duration seconds, drawn by Zipf popularity
from --combos distinct combinations of 3-12 modules, module order shuffled.
A separate probe process polls /readyz and /healthz every 100 ms with a 1 s
timeout, as kubelet would. The same storm then hits the tuned service with carry-over
off (every bundle of the release built), and a naive configuration (one esbuild run per
bundle, waiters woken in one iteration, no fallback budget, unbounded queue, no lag
shedding, no carry-over). One table compares the three.

Run: make bench-storm   (about five minutes; not part of the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"


@dataclass(frozen=True)
class Corpus:
    package: str
    warm: str
    release: str
    pattern: str  # module files a page asks for (a regex over paths in the tarball)
    exclude: tuple[str, ...] = ()
    # Modules a page adds at most one of, a third of the time, by Zipf popularity (a locale).
    optional: str = ""
    # Served as an npm source (--source npm:NAME) from a static registry on loopback that
    # holds the package's versions and their dependency trees, installed by the npm client.
    npm: bool = False


CORPORA = {
    "lodash-es": Corpus(
        "lodash-es", "4.17.20", "4.17.21", r"[a-zA-Z][a-zA-Z0-9]*\.js", ("lodash", "lodash.default")
    ),
    "date-fns": Corpus(
        "date-fns",
        "4.0.0",
        "4.1.0",
        r"[a-z][a-zA-Z0-9]*\.js",
        ("index", "fp", "locale", "constants", "types"),
        optional=r"locale/[a-z][a-zA-Z0-9-]*\.js",
    ),
    # A package with a dependency (tslib, imported by every module), installed by npm.
    "rxjs": Corpus(
        "rxjs",
        "7.8.0",
        "7.8.1",
        r"dist/esm5/internal/(?:operators|observable)/[a-z][a-zA-Z]*\.js",
        npm=True,
    ),
}
# A major release: nothing carries over (3.x and 4.x share no file), every page of the
# release's first seconds waits for the pull (not run by default: --packages).
CORPORA["date-fns-major"] = dataclasses.replace(CORPORA["date-fns"], warm="3.6.0")
NAIVE_FLAGS = [
    "--build-batch-max", "1",
    "--flight-release", "all-at-once",
    "--fallback-budget-ms", "-1",
    "--build-queue-max", "-1",
    "--shed-lag-ms", "0",
]  # fmt: skip
# The storm's pages all come from one load process, one address: its limits are a
# client's (bench_flood measures them), not a release's many pages'.
ONE_ADDRESS = ["--client-requests-per-s", "0", "--client-builds-per-s", "0"]
PULL_PHASES = "bundler_source_pull_phase_seconds_total"
CARRYOVER = "bundler_carryover_total"
# What browsers send; the bytes counted are the compressed bytes on the wire.
ACCEPT_ENCODING = "gzip, deflate, br"
PROBE_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 1.0
# After the storm, how long outstanding requests may still finish before they count as failed.
GRACE_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_corpus(corpus: Corpus) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    for version in (corpus.warm, corpus.release):
        if not (CACHE / f"{corpus.package}-{version}.tgz").exists():
            subprocess.run(
                ["npm", "pack", f"{corpus.package}@{version}", "--pack-destination", str(CACHE)],
                check=True,
                capture_output=True,
            )


@contextmanager
def artifact_server(port: int) -> Iterator[str]:
    """CACHE (the tarballs and the static registry) served on loopback by python -m
    http.server; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(CACHE)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def source_flags(corpus: Corpus, artifact_url: str) -> list[str]:
    if corpus.npm:
        return ["--source", f"npm:{corpus.package}", "--npm-registry", artifact_url + "/registry"]
    return ["--source", artifact_url + f"/{corpus.package}-{{version}}.tgz"]


def fill_registry(corpora: list[Corpus], artifact_url: str) -> Path | None:
    """The npm corpora's versions and dependency trees as a static registry under CACHE
    (tests/registry.py), its tarball URLs naming ``artifact_url``."""
    sys.path.insert(0, str(ROOT))
    from tests.registry import StaticRegistry

    npm_corpora = [c for c in corpora if c.npm]
    if not npm_corpora:
        return None
    root = CACHE / "registry"
    shutil.rmtree(root, ignore_errors=True)
    registry = StaticRegistry(root)
    for corpus in npm_corpora:
        for version in (corpus.warm, corpus.release):
            registry.publish_real(corpus.package, version)
    registry.bake(artifact_url + "/registry")
    return root


def public_modules(corpus: Corpus, pattern: str = "") -> list[str]:
    with tarfile.open(CACHE / f"{corpus.package}-{corpus.release}.tgz") as tar:
        names = [m.name.removeprefix("package/") for m in tar.getmembers()]
    return sorted(
        n[:-3]
        for n in names
        if re.fullmatch(pattern or corpus.pattern, n) and n[:-3] not in corpus.exclude
    )


def make_combos(corpus: Corpus, count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    modules = public_modules(corpus)
    optional = public_modules(corpus, corpus.optional) if corpus.optional else []
    rng.shuffle(optional)  # their popularity rank
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(optional))]
    seen: set[tuple[str, ...]] = set()
    combos: list[list[str]] = []
    while len(combos) < count:
        picked = rng.sample(modules, rng.randint(3, 12))
        if optional and rng.random() < 1 / 3:
            picked += rng.choices(optional, weights=weights)
        combo = tuple(sorted(picked))
        if combo not in seen:
            seen.add(combo)
            combos.append(list(combo))
    return combos


# ---------------------------------------------------------------- roles (own processes)


async def probe_role(url: str, out: Path, duration_s: float) -> None:
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    # kubelet opens a new connection per probe; so does this.
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
    ) as session:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            tick = time.monotonic()
            for path in ("/readyz", "/healthz"):
                started = time.perf_counter()
                try:
                    async with session.get(url + path) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                results.append(
                    {"path": path, "s": time.perf_counter() - started, "ok": ok, "at": time.time()}
                )
            await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - tick)))
    out.write_text(json.dumps(results))


async def load_role(
    url: str,
    out: Path,
    combos_file: Path,
    rate: float,
    duration_s: float,
    seed: int,
    version: str,
) -> None:
    combos = json.loads(combos_file.read_text())
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(combos))]  # Zipf, s = 1.1
    total = int(rate * duration_s)
    picks = rng.choices(range(len(combos)), weights=weights, k=total)
    records: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=duration_s + GRACE_S)
    connector = aiohttp.TCPConnector(limit=2000)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(i: int, sent_at: float) -> None:
            modules = list(combos[picks[i]])
            rng.shuffle(modules)
            record: dict[str, Any] = {
                "t": sent_at,
                "combo": picks[i],  # its rank by popularity (kept records: --keep)
                "status": 0,
                "mode": "",
                "ttfb": None,
                "bytes": 0,
            }
            started = time.perf_counter()
            try:
                async with session.get(
                    f"{url}/bundle.js?modules={','.join(modules)}&v={version}",
                    headers={"Accept-Encoding": ACCEPT_ENCODING},
                    auto_decompress=False,
                ) as resp:
                    record["ttfb"] = time.perf_counter() - started
                    record["status"] = resp.status
                    record["mode"] = resp.headers.get("X-Bundle-Mode", "")
                    record["bytes"] = len(await resp.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                record["error"] = type(exc).__name__
            records.append(record)

        start = time.monotonic()
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, i / rate)))
        await asyncio.wait(tasks, timeout=GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps(records))


# ---------------------------------------------------------------- orchestration


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def labelled(url: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of a labelled metric, or None."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def pull_phases(url: str) -> dict[str, float]:
    return {
        phase: labelled(url, PULL_PHASES, {"phase": phase}) or 0.0
        for phase in ("download", "extract", "dependencies", "publish")
    }


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time of a process (user + system) and of its children (esbuild), those still
    running (its long-lived esbuilds) and those reaped."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(of: int) -> list[str]:
        return Path(f"/proc/{of}/stat").read_text().rsplit(")", 1)[1].split()

    # fields[11:15] are utime, stime, cutime, cstime (stat(5) fields 14-17)
    mine = fields(pid)
    own = (int(mine[11]) + int(mine[12])) / tick
    children = (int(mine[13]) + int(mine[14])) / tick
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in listing.read_text().split():
            try:
                theirs = fields(int(child))
            except FileNotFoundError:  # reaped since: counted above next time
                continue
            children += sum(int(v) for v in theirs[11:15]) / tick
    return own, children


def lag_buckets(url: str) -> dict[float, float]:
    """Cumulative counts of the loop-lag histogram, by upper bound in seconds."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        m = re.match(r'bundler_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets[float(m.group(1))] = float(m.group(2))
    return buckets


def lag_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Upper bound of the bucket holding the q-quantile of the samples taken in between."""
    counts = {le: after[le] - before.get(le, 0) for le in sorted(after)}
    total = counts[float("inf")]
    for le, cumulative in counts.items():
        if cumulative >= q * total:
            return le
    return float("inf")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the service exited during start")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the service did not become ready")


def fill_cache(url: str, combos: list[list[str]], version: str) -> None:
    """The old version's cache as days of its traffic leave it: every combination built
    (POST /warm, as `bundler warm --server` does)."""

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(8)

            async def one(mods: list[str]) -> None:
                body = {"version": version, "modules": mods}
                for _ in range(20):
                    async with sem, session.post(f"{url}/warm", json=body) as r:
                        await r.read()
                        if r.status != 503:
                            return
                    await asyncio.sleep(0.5)

            await asyncio.gather(*(one(c) for c in combos))

    asyncio.run(run())


def warm_up(url: str, combos: list[list[str]], count: int, version: str) -> None:
    """The old version's traffic: ``count`` requests by the same Zipf popularity as the
    storm (so the versionless popularity sketch has seen what pages ask for)."""
    rng = random.Random(1)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(combos))]
    picks = [combos[i] for i in rng.choices(range(len(combos)), weights=weights, k=count)]

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            sem = asyncio.Semaphore(4)

            async def one(mods: list[str]) -> None:
                async with (
                    sem,
                    session.get(f"{url}/bundle.js?modules={','.join(mods)}&v={version}") as r,
                ):
                    await r.read()

            await asyncio.gather(*(one(c) for c in picks))

    asyncio.run(run())


@dataclass
class Result:
    probe: list[dict[str, Any]]
    load: list[dict[str, Any]]
    builds: float
    esbuild_runs: float
    fallback: dict[str, Any]
    lag_max_s: float
    lag_p99_s: float
    peak_rss_kib: int
    cpu_s: tuple[float, float]  # during the storm: the service's own, its children's (esbuild)
    pull_s: float  # the release's pull (download and unpack)
    pull_phases: dict[str, float]  # the same by phase
    fallback_ready_s: tuple[float | None, float | None]  # first part, all of it
    carried: float  # bundles carried over from the warm version (no build)
    changed: float  # bundles decided "rebuild" (an input or its resolution changed)


def fallback_info(url: str, version: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{url}/fallback.json?v={version}", timeout=60) as resp:
            info: dict[str, Any] = json.loads(resp.read())
    except OSError:
        return {}
    return info


def run_storm(
    label: str,
    flags: list[str],
    artifact_url: str,
    combos_file: Path,
    args: argparse.Namespace,
    corpus: Corpus,
) -> Result:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        work_dir = Path(work)
        log = (work_dir / "server.log").open("wb")
        server = subprocess.Popen(
            [
                sys.executable, "-m", "bundler", "serve", "--port", str(port),
                "--data-dir", str(work_dir / "data"),
                *source_flags(corpus, artifact_url),
                "--default-version", corpus.warm, "--log-level", "WARNING", *ONE_ADDRESS, *flags,
            ],
            cwd=ROOT, stderr=log, env={**os.environ, **({"PYTHONASYNCIODEBUG": "1"} if args.debug else {})},
        )  # fmt: skip
        try:
            wait_ready(url, server)
            if args.fill_cache:
                fill_cache(url, json.loads(combos_file.read_text()), corpus.warm)
            warm_up(url, json.loads(combos_file.read_text()), args.warm, corpus.warm)
            builds_before = metric(url, "bundler_builds_total")
            carried_before = labelled(url, CARRYOVER, {"reason": "", "result": "carried"}) or 0.0
            changed_before = metric(url, CARRYOVER) - carried_before
            cpu_before = cpu_seconds(server.pid)
            runs_before = metric(url, "bundler_esbuild_runs_total")
            pull_before = metric(url, "bundler_source_pull_seconds_total")
            phases_before = pull_phases(url)
            lag_before = lag_buckets(url)
            me = [sys.executable, __file__]
            probe_out, load_out = work_dir / "probe.json", work_dir / "load.json"
            probe = subprocess.Popen(
                [
                    *me,
                    "--role",
                    "probe",
                    "--url",
                    url,
                    "--out",
                    str(probe_out),
                    "--duration",
                    str(args.duration + 3),
                ]
            )
            time.sleep(1)  # the probe's baseline before the release
            print(
                f"  {label}: storm of {int(args.rate * args.duration)} requests ...",
                file=sys.stderr,
            )
            load = subprocess.Popen([
                *me, "--role", "load", "--url", url, "--out", str(load_out), "--combos-file", str(combos_file),
                "--rate", str(args.rate), "--duration", str(args.duration), "--seed", str(args.seed),
                "--load-niceness", str(args.load_niceness), "--version", corpus.release,
            ])  # fmt: skip
            spy = None
            if args.profile:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--format",
                        "raw",
                        "-o",
                        str(args.profile),
                        "-d",
                        str(int(args.duration)),
                        "-p",
                        str(server.pid),
                        "-r",
                        "200",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            load.wait()
            probe.wait()
            if spy:
                spy.wait()
            cpu_after = cpu_seconds(server.pid)
            builds = metric(url, "bundler_builds_total") - builds_before
            carried = labelled(url, CARRYOVER, {"reason": "", "result": "carried"}) or 0.0
            changed = metric(url, CARRYOVER) - carried - changed_before
            carried -= carried_before
            runs = metric(url, "bundler_esbuild_runs_total") - runs_before
            fallback = (
                fallback_info(url, corpus.release) if "--fallback-budget-ms" not in flags else {}
            )
            lag_max = metric(url, "bundler_event_loop_lag_max_seconds")
            pull_s = metric(url, "bundler_source_pull_seconds_total") - pull_before
            phases = {k: v - phases_before.get(k, 0.0) for k, v in pull_phases(url).items()}
            first, whole = (
                labelled(
                    url, "bundler_fallback_ready_seconds", {"part": part, "version": corpus.release}
                )
                for part in ("first", "all")
            )
            lag_p99 = lag_quantile(lag_before, lag_buckets(url), 0.99)
            status = Path(f"/proc/{server.pid}/status").read_text()
            rss = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
            if args.keep:
                for f in (probe_out, load_out):
                    (args.keep / f"{corpus.package}-{label}-{f.name}").write_bytes(f.read_bytes())
            return Result(
                json.loads(probe_out.read_text()),
                json.loads(load_out.read_text()),
                builds,
                runs,
                fallback,
                lag_max,
                lag_p99,
                rss,
                (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]),
                pull_s,
                phases,
                (first, whole),
                carried,
                changed,
            )
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
            log.close()
            if args.keep:
                (args.keep / f"{corpus.package}-{label}-server.log").write_bytes(
                    (work_dir / "server.log").read_bytes()
                )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def summarize(result: Result, duration_s: float) -> dict[str, str]:
    ready = [p["s"] * 1000 for p in result.probe if p["path"] == "/readyz"]
    health = [p["s"] * 1000 for p in result.probe if p["path"] == "/healthz"]
    failures = sum(1 for p in result.probe if not p["ok"])
    load = result.load
    done = [r for r in load if r["ttfb"] is not None]
    five = sum(1 for r in load if r["status"] >= 500)
    lost = sum(1 for r in load if r["ttfb"] is None)
    last = [r for r in done if r["t"] >= duration_s * 2 / 3]
    tailored_last = sum(1 for r in last if r["mode"] == "tailored") / max(1, len(last))
    first, whole = result.fallback_ready_s
    row = {
        "pull s (download, unpack)": f"{result.pull_s:.2f}",
        "  download / extract / deps / publish s": " / ".join(
            f"{result.pull_phases.get(p, 0.0):.2f}"
            for p in ("download", "extract", "dependencies", "publish")
        ),
        "fallback usable / whole s": (
            f"{first:.2f} / {whole:.2f}" if first is not None and whole is not None else "-"
        ),
        "readyz p50 / p99 / max ms": f"{pct(ready, 0.5):.1f} / {pct(ready, 0.99):.1f} / {max(ready):.1f}",
        "healthz p50 / p99 / max ms": f"{pct(health, 0.5):.1f} / {pct(health, 0.99):.1f} / {max(health):.1f}",
        "probe failures": f"{failures} of {len(result.probe)}",
    }
    for mode in ("tailored", "fallback"):
        t = [r["ttfb"] * 1000 for r in done if r["mode"] == mode]
        row[f"TTFB {mode} p50/p95/p99 ms (n)"] = (
            f"{pct(t, 0.5):.0f} / {pct(t, 0.95):.0f} / {pct(t, 0.99):.0f} ({len(t)})" if t else "-"
        )
    all_ttfb = [r["ttfb"] * 1000 for r in done]
    row["TTFB all p50/p95/p99 ms"] = (
        f"{pct(all_ttfb, 0.5):.0f} / {pct(all_ttfb, 0.95):.0f} / {pct(all_ttfb, 0.99):.0f}"
    )
    row["5xx / no answer"] = f"{five} / {lost}"
    tailored_all = sum(1 for r in done if r["mode"] == "tailored") / max(1, len(done))
    row["tailored share, whole storm"] = f"{tailored_all:.1%}"
    row["tailored share, last third"] = f"{tailored_last:.1%}"
    fallback = result.fallback
    row["fallback bytes / modules"] = (
        f"{fallback['bytes'] / 1024:.0f} KiB / {fallback['modules']}" if fallback else "-"
    )
    answered = [r for r in done if r["status"] == 200]
    tailored = [r["bytes"] for r in answered if r["mode"] == "tailored"]
    mean_all = sum(r["bytes"] for r in answered) / max(1, len(answered))
    mean_tailored = sum(tailored) / max(1, len(tailored))
    row["mean bytes/request (wire)"] = f"{mean_all / 1024:.1f} KiB"
    row["mean tailored bundle (wire)"] = f"{mean_tailored / 1024:.1f} KiB"
    row["bytes/request vs tailored"] = f"{mean_all / max(1.0, mean_tailored):.2f} x"
    row["bytes served (wire)"] = f"{sum(r['bytes'] for r in load) / 1e6:.1f} MB"
    row["loop lag p99 (bucket) / max ms"] = (
        f"<= {result.lag_p99_s * 1000:g} / {result.lag_max_s * 1000:.0f}"
    )
    row["builds / s"] = f"{result.builds / duration_s:.1f}"
    row["built / carried / decided rebuild"] = (
        f"{result.builds:.0f} / {result.carried:.0f} / {result.changed:.0f}"
    )
    row["esbuild runs / bundles per run"] = (
        f"{result.esbuild_runs:.0f} / {result.builds / max(1.0, result.esbuild_runs):.1f}"
    )
    own, children = result.cpu_s
    row["CPU s: service / esbuild"] = f"{own:.1f} / {children:.1f}"
    row["peak RSS MiB"] = f"{result.peak_rss_kib / 1024:.0f}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=("bench", "probe", "load"), default="bench")
    parser.add_argument("--url")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--combos-file", type=Path)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--combos", type=int, default=2000)
    parser.add_argument(
        "--warm", type=int, default=600, help="requests for the old version, made first"
    )
    parser.add_argument(
        "--fill-cache",
        action="store_true",
        help="first build every combination for the old version (its cache after days of "
        "traffic: what carry-over starts from)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only", help="comma-separated configurations to run: tuned, no-carry, naive"
    )
    parser.add_argument(
        "--packages",
        default="lodash-es,date-fns,rxjs",
        help=f"comma-separated corpora to run, of: {', '.join(CORPORA)}",
    )
    parser.add_argument("--version", help=argparse.SUPPRESS)  # the load role's release
    parser.add_argument(
        "--serve-flags", default="", help="extra `bundler serve` flags for the tuned run"
    )
    # The clients stand in for browsers on other machines: they yield to everything.
    parser.add_argument("--load-niceness", type=int, default=19)
    parser.add_argument(
        "--profile", type=Path, help="py-spy raw profile of the service (needs: pip install py-spy)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="asyncio debug mode: logs slow callbacks"
    )
    parser.add_argument("--keep", type=Path, help="copy the raw probe and load records here")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where the services' data dirs are made (default: the system's temp dir); "
        "e.g. a tmpfs, to see what the disk costs a pull",
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    if args.role == "probe":
        asyncio.run(probe_role(args.url, args.out, args.duration))
        return
    if args.role == "load":
        # The clients stand in for browsers on other machines: they must not take the
        # CPU the service would have in production, so they yield it (nice), like esbuild.
        os.nice(args.load_niceness)
        asyncio.run(
            load_role(
                args.url,
                args.out,
                args.combos_file,
                args.rate,
                args.duration,
                args.seed,
                args.version,
            )
        )
        return

    names = args.packages.split(",")
    corpora = [CORPORA[name] for name in names]
    for corpus in corpora:
        ensure_corpus(corpus)
    artifact_port = free_port()
    fill_registry(corpora, f"http://127.0.0.1:{artifact_port}")
    configs = {
        "tuned": args.serve_flags.split(),
        "no-carry": [*args.serve_flags.split(), "--carry-over", "off"],
        "naive": [*NAIVE_FLAGS, "--carry-over", "off"],
    }
    if args.only:
        unknown = set(args.only.split(",")) - set(configs)
        if unknown:
            parser.error(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        configs = {name: configs[name] for name in args.only.split(",")}
    tables: dict[str, dict[str, dict[str, str]]] = {}
    with artifact_server(artifact_port) as artifact_url:
        for name, corpus in zip(names, corpora, strict=True):
            combos = make_combos(corpus, args.combos, args.seed)
            rows = tables[name] = {}
            with tempfile.NamedTemporaryFile("w", suffix=".json") as combos_file:
                json.dump(combos, combos_file)
                combos_file.flush()
                for label, flags in configs.items():
                    rows[label] = summarize(
                        run_storm(label, flags, artifact_url, Path(combos_file.name), args, corpus),
                        args.duration,
                    )
    for name, corpus in zip(names, corpora, strict=True):
        rows = tables[name]
        print(
            f"\nRelease storm: {corpus.package} {corpus.warm} warm -> {corpus.release} cold, "
            f"{args.rate:g} req/s for {args.duration:g} s, {args.combos} combinations "
            f"(Zipf s=1.1, 3-12 modules of {len(public_modules(corpus))}"
            + (
                f", a third with one of {len(public_modules(corpus, corpus.optional))} locales"
                if corpus.optional
                else ""
            )
            + f"), {os.cpu_count()} CPUs"
        )
        labels = list(rows)
        print(f"{'':32}" + "".join(f"{label:>30}" for label in labels))
        for key in rows[labels[0]]:
            print(f"{key:32}" + "".join(f"{rows[label][key]:>30}" for label in labels))


if __name__ == "__main__":
    main()
