"""The cache warm-up: build a release's popular combinations before its traffic arrives.

Two targets, one loop:
- a running server: POST /warm for each combination (it builds at the lowest
  priority and answers when the bundle is cached, never with the fallback);
- offline, straight into a data dir's disk tier (a Kubernetes Job sharing the
  volume with the pods), with esbuild run here.
Idempotent: what is cached already is skipped. Bounded concurrency.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import aiohttp
from tqdm import tqdm

from bundler.carry.carrier import Carrier
from bundler.components import build_options, make_components
from bundler.errors import BundlerError, one_line
from bundler.fallback.model import describe_fallback
from bundler.service.building import tailored_bundle
from bundler.settings import Settings
from bundler.slots import Priority
from bundler.spec import CLASSIC, MODULE, parse_query

# A combination whose warm-up fails is reported; these say why in one line.
MAX_REASON_CHARS = 200
# A 503 (the server's build queue is full, or a pull failed) is retried after Retry-After.
BUSY_RETRIES = 5


class Target(Protocol):
    # "built" | "carried" | "cached"; raises
    async def warm_one(self, modules: list[str]) -> str: ...
    async def fallback(self) -> dict[str, Any]: ...  # the version's fallback, built if need be


class WarmFailed(Exception):
    pass


@dataclass
class Report:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    # Why bundles that could not be carried over were built (offline: bundler.carry).
    rebuilt: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        total = sum(self.counts.values())
        rate = total / self.seconds if self.seconds else 0.0
        return (
            f"warmed {total} combinations in {self.seconds:.1f} s ({rate:.1f}/s): "
            f"{self.counts['built']} built, {self.counts['cached']} already cached, "
            f"{self.counts['failed']} failed, {self.counts['carried']} carried over"
        ) + "".join(f"\n  rebuilt, {why}: {n}" for why, n in sorted(self.rebuilt.items()))


def read_combinations(lines: Iterable[str]) -> list[list[str]]:
    """One comma-separated module list per line; blank lines and # comments are skipped."""
    combos = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            combos.append([m.strip() for m in line.split(",") if m.strip()])
    return combos


async def combinations_from_server(url: str, top: int) -> list[list[str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url.rstrip('/')}/combos", params={"top": str(top)}) as resp,
    ):
        if resp.status != 200:
            raise WarmFailed(f"GET {url}/combos answered HTTP {resp.status}")
        body = await resp.json()
    return [list(c["modules"]) for c in body["combos"]]


class ServerTarget:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        version: str,
        token: str,
        form: str = CLASSIC,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/") + "/warm"
        self.version = version
        self.headers = {"X-Warm-Token": token} if token else {}
        self.form = form  # iife (/bundle.js) or esm (/bundle.mjs)

    async def fallback(self) -> dict[str, Any]:
        url = self.url.removesuffix("/warm") + "/fallback.json"
        async with self.session.get(url, params={"v": self.version}) as resp:
            if resp.status != 200:
                raise WarmFailed(f"HTTP {resp.status}: {(await resp.text()).strip()}")
            summary: dict[str, Any] = await resp.json()
        return summary

    async def warm_one(self, modules: list[str]) -> str:
        payload = {"version": self.version, "modules": modules, "format": self.form}
        for attempt in range(BUSY_RETRIES + 1):
            async with self.session.post(self.url, json=payload, headers=self.headers) as resp:
                if resp.status == 200:
                    return str((await resp.json())["status"])
                reason = f"HTTP {resp.status}: {(await resp.text()).strip()}"
                retry_after_s = float(resp.headers.get("Retry-After", "1"))
            if resp.status != 503 or attempt == BUSY_RETRIES:
                raise WarmFailed(reason)
            await asyncio.sleep(retry_after_s)  # the server is busy (its queue is full): wait
        raise AssertionError("unreachable")


class OfflineTarget:
    """Builds here and writes into the data dir's disk tier, as the service would."""

    def __init__(
        self,
        settings: Settings,
        version: str,
        carry_from: str | None = None,
        form: str = CLASSIC,
    ) -> None:
        self.settings = settings
        self.version = version
        self.carry_from = carry_from  # the bundles of this version are carried where they can be
        parts = make_components(settings, max_versions=1)
        self.source, self.builder, self.disk = parts.source, parts.builder, parts.tiers.disk
        self.options, self.fallbacks = parts.options, parts.fallbacks
        if form == MODULE:
            self.options = build_options(settings, module=True)
        self.carrier = Carrier(
            parts.source,
            parts.tiers,
            self.builder.esbuilds.binary_version,
            enabled=settings.carry_over == "on" and carry_from is not None,
            carry_from=lambda: () if carry_from is None else (carry_from,),
        )
        # The popularity the service saved in the data dir chooses the fallback's modules.
        parts.combos.load()

    async def start(self) -> None:
        await self.source.start()
        await self.disk.start()

    async def close(self) -> None:
        await self.fallbacks.close()  # waits for its write into the data dir
        await self.builder.close()
        await self.source.close()
        await self.disk.close()

    async def fallback(self) -> dict[str, Any]:
        """Built into <data-dir>/fallback/, where the service finds it at its start."""
        fallback = await self.fallbacks.get(self.version)
        if fallback is None:
            failure = self.fallbacks.failure(self.version)
            raise WarmFailed(failure.message if failure else "the fallback could not be built")
        return fallback.summary()

    async def warm_one(self, modules: list[str]) -> str:
        spec, _ = parse_query(
            [("modules", ",".join(modules)), ("v", self.version)],
            default_version=self.version,
            options=self.options,
            max_modules=self.settings.max_modules,
            max_chars=self.settings.max_module_name_chars,
        )
        spec = dataclasses.replace(spec, content=await self.source.digest(self.version))
        if await self.disk.get(spec.key) is not None:
            return "cached"
        if self.carrier.enabled:
            carried = await self.carrier.carry(spec)
            if carried is not None:
                await self.disk.put(carried)
                return "carried"
        bundle = await tailored_bundle(self.source, self.builder, spec, Priority.WARM)
        await self.disk.put(bundle)
        return "built"

    def rebuilt(self) -> collections.Counter[str]:
        return collections.Counter(
            {
                k.removeprefix("rebuilt:"): n
                for k, n in self.carrier.results.items()
                if k != "carried"
            }
        )


async def warm(
    combos: list[list[str]],
    target: Target,
    concurrency: int,
    progress: Callable[[str], None] | None = None,
) -> Report:
    report = Report()
    slots = asyncio.Semaphore(concurrency)
    started = time.perf_counter()

    async def one(modules: list[str]) -> None:
        async with slots:
            try:
                outcome = await target.warm_one(modules)
            except (BundlerError, WarmFailed, aiohttp.ClientError, TimeoutError) as exc:
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                report.failures.append((",".join(modules), one_line(reason, MAX_REASON_CHARS)))
                outcome = "failed"
            report.counts[outcome] += 1
            if progress is not None:
                progress(outcome)

    await asyncio.gather(*(one(c) for c in combos))
    report.seconds = time.perf_counter() - started
    return report


async def warm_fallback(target: Target, out: TextIO = sys.stderr) -> str | None:
    """The version's fallback first, so a release never meets a cold one; the problem if
    it could not be had."""
    try:
        summary = await target.fallback()
    except (BundlerError, WarmFailed, aiohttp.ClientError, TimeoutError) as exc:
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        print(f"fallback: FAILED: {one_line(reason, MAX_REASON_CHARS)}", file=out)
        return reason
    print(describe_fallback(summary), file=out)
    return None


async def run_with_progress(
    combos: list[list[str]], target: Target, concurrency: int, out: TextIO = sys.stderr
) -> Report:
    with tqdm(total=len(combos), file=out, unit="combo", dynamic_ncols=True) as bar:

        def advance(outcome: str) -> None:
            counts[outcome] += 1
            bar.set_postfix(
                built=counts["built"],
                carried=counts["carried"],
                cached=counts["cached"],
                failed=counts["failed"],
            )
            bar.update()

        counts: collections.Counter[str] = collections.Counter()
        return await warm(combos, target, concurrency, advance)


async def with_target(
    settings: Settings,
    version: str,
    server: str | None,
    fn: Callable[[Target], Awaitable[Report]],
    carry_from: str | None = None,
    form: str = CLASSIC,
) -> Report:
    if server:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            return await fn(ServerTarget(session, server, version, settings.warm_token, form))
    target = OfflineTarget(settings, version, carry_from, form)
    await target.start()
    try:
        report = await fn(target)
        report.rebuilt.update(target.rebuilt())
        return report
    finally:
        await target.close()
