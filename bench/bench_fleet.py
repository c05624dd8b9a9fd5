"""The fleet benchmark: three replicas behind HAProxy (round robin), with and without the
shared tier (Redis), through one release storm.

Real parts, each its own process on this machine: redis-server and HAProxy (Debian's),
the replicas (`bundler serve`), a static file server for the version tarballs, a probe
per replica polling /readyz and /healthz every 100 ms as kubelet would, and the storm's
load (bench_storm.py's roles). One table compares, side by side in one run:

1. the release storm through HAProxy: bundles built and esbuild runs across the replicas
   against the distinct combinations requested, TTFB, tailored share in the last third,
   probe failures and 5xx;
2. a fourth replica started after the storm, asked for the fleet's 100 most popular
   bundles (from /combos): its esbuild runs;
3. (with Redis) Redis killed 5 s into a second storm of other combinations: 5xx and probe
   failures.

Run: make bench-fleet   (about three minutes; not part of the test suite)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_storm as storm

ROOT = storm.ROOT
TOP = 100


@dataclass
class Fleet:
    work: Path
    artifact_url: str
    corpus: storm.Corpus
    redis_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)
    redis: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start_redis(self) -> None:
        port = storm.free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory", "512mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)

    def kill_redis(self) -> None:
        if self.redis is not None:
            self.redis.send_signal(signal.SIGKILL)
            self.redis.wait()
            self.redis = None

    def start_replica(self) -> str:
        port = storm.free_port()
        index = len(self.replicas)
        redis_flags = ["--redis-url", self.redis_url] if self.redis_url else []
        log = (self.work / f"replica-{index}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "bundler", "serve", "--port", str(port),
                "--data-dir", str(self.work / f"data-{index}"),
                *storm.source_flags(self.corpus, self.artifact_url),
                "--default-version", self.corpus.warm, "--log-level", "WARNING", *redis_flags,
                *storm.ONE_ADDRESS,
            ],
            cwd=ROOT, stderr=log,
        )  # fmt: skip
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        self.replicas.append(url)
        storm.wait_ready(url, proc)
        return url

    def start_haproxy(self, count: int) -> None:
        port = storm.free_port()
        servers = "\n".join(
            f"  server r{i} {url.removeprefix('http://')} check inter 1s"
            for i, url in enumerate(self.replicas[:count])
        )
        config = self.work / "haproxy.cfg"
        config.write_text(
            "global\n  maxconn 4000\n"
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n"
            "  timeout server 60s\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
            "backend be\n  balance roundrobin\n  option httpchk GET /readyz\n"
            f"{servers}\n"
        )
        self.haproxy = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "haproxy.log").open("wb"),
        )
        self.url = f"http://127.0.0.1:{port}"
        time.sleep(1.5)  # its first health checks
        if self.haproxy.poll() is not None:
            raise RuntimeError("haproxy exited: " + (self.work / "haproxy.log").read_text())

    def total(self, name: str, replicas: list[str] | None = None) -> float:
        return sum(storm.metric(url, name) for url in (replicas or self.replicas))

    def settle(self, timeout_s: float = 120) -> None:
        """Until no replica has a build queued or running, twice in a row."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            busy = self.total("bundler_build_queue_depth") + self.total("bundler_build_pool_busy")
            quiet = quiet + 1 if busy == 0 else 0
            time.sleep(1)

    def stop(self) -> None:
        for proc in [*self.procs, self.haproxy]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.procs, self.haproxy]:
            if proc is not None:
                proc.wait(timeout=60)
        self.kill_redis()


def redis_errors(fleet: Fleet) -> float:
    return sum(
        storm.labelled(url, "bundler_shared_lookups_total", {"result": "error"}) or 0.0
        for url in fleet.replicas
    )


def distinct_requested(combos_file: Path, rate: float, duration: float, seed: int) -> int:
    """How many combinations the load role draws (its own seeded draw, repeated)."""
    combos = json.loads(combos_file.read_text())
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(combos))]
    return len(set(rng.choices(range(len(combos)), weights=weights, k=int(rate * duration))))


def run_load(
    fleet: Fleet,
    combos_file: Path,
    args: argparse.Namespace,
    seed: int,
    kill_redis_at: float | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    me = [sys.executable, str(Path(storm.__file__))]
    probes = []
    for i, url in enumerate(fleet.replicas):
        out = fleet.work / f"probe-{seed}-{i}.json"
        probes.append(
            (
                out,
                subprocess.Popen(
                    [
                        *me,
                        "--role",
                        "probe",
                        "--url",
                        url,
                        "--out",
                        str(out),
                        "--duration",
                        str(args.duration + 3),
                    ]
                ),
            )
        )
    time.sleep(1)
    load_out = fleet.work / f"load-{seed}.json"
    load = subprocess.Popen([
        *me, "--role", "load", "--url", fleet.url, "--out", str(load_out),
        "--combos-file", str(combos_file), "--rate", str(args.rate), "--duration", str(args.duration),
        "--seed", str(seed), "--version", fleet.corpus.release,
        "--load-niceness", str(args.load_niceness),
    ])  # fmt: skip
    if kill_redis_at is not None:
        time.sleep(kill_redis_at)
        fleet.kill_redis()
    load.wait()
    probe_records: list[dict[str, Any]] = []
    for out, proc in probes:
        proc.wait()
        probe_records += json.loads(out.read_text())
    return json.loads(load_out.read_text()), probe_records


def fourth_replica(fleet: Fleet, version: str) -> float:
    """A replica started after the storm, asked for the fleet's most popular bundles."""
    with urllib.request.urlopen(fleet.replicas[0] + f"/combos?top={TOP}") as resp:
        top = json.loads(resp.read())["combos"]
    url = fleet.start_replica()
    before = storm.metric(url, "bundler_esbuild_runs_total")
    for combo in top:
        with urllib.request.urlopen(
            f"{url}/bundle.js?modules={','.join(combo['modules'])}&v={version}"
        ) as resp:
            resp.read()
    return storm.metric(url, "bundler_esbuild_runs_total") - before


def summarize(
    load: list[dict[str, Any]], probes: list[dict[str, Any]], duration: float
) -> dict[str, str]:
    ttfb = [r["ttfb"] * 1000 for r in load if r["ttfb"] is not None]
    last = [r for r in load if r["t"] >= duration * 2 / 3 and r["status"] == 200]
    tailored = sum(1 for r in last if r["mode"] in ("tailored", "built", "hit"))
    return {
        "TTFB p50 / p99 ms": f"{storm.pct(ttfb, 0.50):.0f} / {storm.pct(ttfb, 0.99):.0f}",
        "tailored share, last third": f"{100 * tailored / max(1, len(last)):.1f}%",
        "5xx / no answer": f"{sum(1 for r in load if r['status'] >= 500)} / {sum(1 for r in load if r['status'] == 0)}",
        "probe failures": f"{sum(1 for p in probes if not p['ok'])} of {len(probes)}",
    }


def run_fleet(
    with_redis: bool,
    artifact_url: str,
    combos_file: Path,
    second_file: Path,
    args: argparse.Namespace,
    corpus: storm.Corpus,
) -> dict[str, str]:
    label = "redis" if with_redis else "no redis"
    with tempfile.TemporaryDirectory() as work:
        fleet = Fleet(Path(work), artifact_url, corpus)
        try:
            if with_redis:
                fleet.start_redis()
            for _ in range(args.replicas):
                fleet.start_replica()
            fleet.start_haproxy(args.replicas)
            storm.warm_up(fleet.url, json.loads(combos_file.read_text()), args.warm, corpus.warm)
            builds_before = fleet.total("bundler_builds_total")
            runs_before = fleet.total("bundler_esbuild_runs_total")
            carried_before = carried(fleet)
            print(
                f"  {label}: storm of {int(args.rate * args.duration)} requests through HAProxy ...",
                file=sys.stderr,
            )
            load, probes = run_load(fleet, combos_file, args, args.seed)
            fleet.settle()  # combinations answered by the fallback are built after the storm
            builds = fleet.total("bundler_builds_total") - builds_before
            runs = fleet.total("bundler_esbuild_runs_total") - runs_before
            distinct = distinct_requested(combos_file, args.rate, args.duration, args.seed)
            row = {
                "distinct combinations requested": str(distinct),
                "bundles built (storm + after), all": f"{builds:.0f} ({builds / distinct:.2f} x distinct)",
                "esbuild runs, all replicas": f"{runs:.0f}",
                "carried over, all replicas": f"{carried(fleet) - carried_before:.0f}",
                "Redis operations failed, all": f"{redis_errors(fleet):.0f}",
                **summarize(load, probes, args.duration),
            }
            print(f"  {label}: a fourth replica, the top {TOP} bundles ...", file=sys.stderr)
            row[f"4th replica: esbuild runs for top {TOP}"] = (
                f"{fourth_replica(fleet, corpus.release):.0f}"
            )
            if with_redis:
                print(f"  {label}: second storm, Redis killed at 5 s ...", file=sys.stderr)
                load2, probes2 = run_load(
                    fleet, second_file, args, args.seed + 1, kill_redis_at=5.0
                )
                second = summarize(load2, probes2, args.duration)
                row["Redis killed: 5xx / no answer"] = second["5xx / no answer"]
                row["Redis killed: probe failures"] = second["probe failures"]
                row["Redis killed: TTFB p50 / p99 ms"] = second["TTFB p50 / p99 ms"]
            return row
        finally:
            fleet.stop()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for kept in [*Path(work).glob("*.log"), *Path(work).glob("*.json")]:
                    shutil.copy(kept, args.keep / f"{label.replace(' ', '-')}-{kept.name}")


def carried(fleet: Fleet) -> float:
    """Bundles carried over from the warm version (bundler.carry), summed over replicas."""
    return sum(
        storm.labelled(url, storm.CARRYOVER, {"reason": "", "result": "carried"}) or 0.0
        for url in fleet.replicas
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="lodash-es", choices=list(storm.CORPORA))
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--combos", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--keep", type=Path, help="copy the logs and the raw load and probe records here"
    )
    parser.add_argument("--only-redis", action="store_true", help="skip the fleet without Redis")
    parser.add_argument(
        "--load-niceness",
        type=int,
        default=19,
        help="nice(1) of the load's process (0: it is never starved by the builds)",
    )
    args = parser.parse_args()
    for tool in ("redis-server", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (Debian: apt-get install redis-server haproxy)")
    corpus = storm.CORPORA[args.package]
    storm.ensure_corpus(corpus)
    artifact_port = storm.free_port()
    storm.fill_registry([corpus], f"http://127.0.0.1:{artifact_port}")
    rows: dict[str, dict[str, str]] = {}
    with (
        storm.artifact_server(artifact_port) as artifact_url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        combos_file = Path(tmp) / "combos.json"
        combos_file.write_text(json.dumps(storm.make_combos(corpus, args.combos, args.seed)))
        second_file = Path(tmp) / "second.json"
        second_file.write_text(json.dumps(storm.make_combos(corpus, args.combos, args.seed + 100)))
        for with_redis in (True,) if args.only_redis else (True, False):
            rows["redis" if with_redis else "no redis"] = run_fleet(
                with_redis,
                artifact_url,
                combos_file,
                second_file,
                args,
                corpus,
            )
    print(
        f"\nFleet: {args.replicas} replicas behind HAProxy (round robin), release storm "
        f"{corpus.package} {corpus.warm} -> {corpus.release}, {args.rate:g} req/s for "
        f"{args.duration:g} s, {args.combos} combinations (Zipf s=1.1), {os.cpu_count()} CPUs"
    )
    labels = list(rows)
    keys = list(dict.fromkeys(k for row in rows.values() for k in row))
    print(f"{'':40}" + "".join(f"{label:>26}" for label in labels))
    for key in keys:
        print(f"{key:40}" + "".join(f"{rows[label].get(key, '-'):>26}" for label in labels))


if __name__ == "__main__":
    main()
