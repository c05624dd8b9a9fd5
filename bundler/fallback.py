"""Static fallback bundles: the modules pages use, registered like a tailored bundle.

While a tailored bundle is being built (or when the pool is saturated), a page
gets its version's fallback instead: bigger, but it registers the modules pages
ask for (bundler.fallback_plan chooses them within a byte budget) under every
name a page may use, so the page works the same. A module the fallback left out
is built for its request as usual.

On disk, one directory per version (``static_fallback/<version>/`` shipped with
the service, or ``<data>/fallback/<version>/`` for ones built at run time):

    bundle.js      the bundle; its sourceMappingURL points at /fallback.js.map?v=<version>
    bundle.js.map  sources relative to the version root
    manifest.json  what it registers, what it left out and why, and what it was built from
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache, TTLCache

from bundler.build.builder import Builder
from bundler.build.jobs import BuildJob, BuildOutput, fallback_map_url
from bundler.cache import BROTLI_QUALITY, BROTLI_QUALITY_MAX, Bundle
from bundler.combos import COMBOS_FILE, PopularCombos
from bundler.errors import BuildFailed, BundlerError, UnknownModule
from bundler.extract import read_facts
from bundler.fallback_plan import (
    DOES_NOT_BUILD,
    FIRST_SURVEY_FACTOR,
    IMPORTS_FAILING,
    SURVEY_SOURCE_FACTOR,
    UNKNOWN,
    Candidates,
    OperatorList,
    Selection,
    Survey,
    entry_point_paths,
    list_candidates,
    rank,
    reason_counts,
    select,
    survey_prefix,
)
from bundler.flight import SingleFlight
from bundler.resolve import read_package_json
from bundler.settings import Settings
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import FORMAT_VERSION, BuildOptions
from bundler.survey import run_survey

if TYPE_CHECKING:
    from bundler.shared import SharedTier

logger = logging.getLogger(__name__)

BUNDLE = "bundle.js"
SOURCE_MAP = "bundle.js.map"
MANIFEST = "manifest.json"
ETAG_PREFIX = "fb-"
# Under the data dir: the fallbacks built at run time (or by build-fallback / warm).
BUILT_FALLBACKS = "fallback"
# Bumped when what a fallback holds, or how it is chosen, changes: older ones are rebuilt.
PLAN_FORMAT = 2
# How long a version whose fallback failed to build is left without one before a request
# retries (the default version's start-up retries on its own backoff).
FAILURE_TTL_S = 30.0
# The survey may look further (a larger share of the package) this many times at most.
MAX_SURVEYS = 3
NOT_BUILDING = (DOES_NOT_BUILD, IMPORTS_FAILING)
# The previous fallback stands in for the first survey when it holds this share of the
# most wanted modules (rxjs's in the storm, built before any page came, held under half;
# one the same traffic chose holds most, less those over budget).
STILL_WANTED = 0.5
# A survey whose selection fills this share of the budget is enough.
BUDGET_FILLED = 0.9
# A fallback's brotli 11 waits for the builds to be done, checked this often, this long
# at most.
IDLE_POLL_S = 0.25
RECOMPRESS_MAX_WAIT_S = 30.0
# Names of modules left out that one log line lists (the manifest lists them all).
LOG_NAMES = 10


@dataclass(frozen=True)
class Fallback:
    version: str
    bundle: Bundle  # its sourcemap is the fallback's map
    names: frozenset[str]
    left_out: Mapping[str, str] = field(default_factory=dict)  # name -> why
    excluded: Mapping[str, int] = field(default_factory=dict)  # not candidates, by kind

    def covers(self, modules: tuple[str, ...]) -> bool:
        return all(m in self.names for m in modules)

    def not_built(self) -> list[str]:
        """The modules left out because they (or what they import) do not build."""
        return [name for name, why in self.left_out.items() if why.startswith(NOT_BUILDING)]

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bytes": len(self.bundle.code),
            "modules": len(self.names),
            "left_out_counts": reason_counts(self.left_out),
            "not_candidates": dict(self.excluded),
        }


@dataclass(frozen=True)
class Plan:
    """How a fallback is chosen: the budget, the operator's list, what pages asked for."""

    max_bytes: int
    operator: tuple[str, ...] = ()
    popular: tuple[str, ...] = ()
    operator_digest: str = ""
    # The fallback served before this one (another version's, whole): at a release, its
    # modules are the new version's quick first part (one esbuild run instead of a survey
    # and a build) where they still hold what pages ask for most; and the modules it left
    # out as not building are left out of the first survey (a run saved: rxjs ships
    # TypeScript sources that fail it).
    previous: tuple[str, ...] = ()
    failed_before: frozenset[str] = frozenset()

    @classmethod
    def make(
        cls,
        version: str,
        max_bytes: int,
        operator: OperatorList,
        popular: Sequence[str],
        previous: Fallback | None = None,
    ) -> Plan:
        return cls(
            max_bytes,
            operator.names(version),
            tuple(popular),
            operator.digest(version),
            tuple(sorted(previous.names)) if previous else (),
            frozenset(previous.not_built()) if previous else frozenset(),
        )


def version_candidates(root: Path) -> Candidates:
    """list_candidates, from what the extraction recorded when it can (no walk)."""
    facts = read_facts(root)
    if facts is not None and isinstance(facts.get("candidates"), dict):
        return Candidates(**facts["candidates"])
    return list_candidates(root)


def identity(
    version: str, options: BuildOptions, source_sha256: str, max_bytes: int, operator_digest: str
) -> dict[str, Any]:
    """What a stored fallback must match to be used: otherwise it is rebuilt."""
    return {
        "format": FORMAT_VERSION,  # of the bundle wrapper
        "plan_format": PLAN_FORMAT,
        "version": version,
        "source_sha256": source_sha256,
        "target": options.target,
        "registry_name": options.registry_name,
        "minify": options.minify,
        "max_bytes": max_bytes,
        "fallback_modules": operator_digest,
    }


@dataclass(frozen=True)
class FallbackBuild:
    version: str
    code: bytes
    sourcemap: bytes
    names: list[str]
    left_out: dict[str, str]
    excluded: dict[str, int]
    max_bytes: int
    operator_digest: str
    source_sha256: str = ""

    def manifest(self, options: BuildOptions) -> dict[str, Any]:
        return {
            **identity(
                self.version, options, self.source_sha256, self.max_bytes, self.operator_digest
            ),
            "bytes": len(self.code),
            "names": sorted(self.names),
            "left_out_counts": reason_counts(self.left_out),
            "not_candidates": self.excluded,
            "left_out": dict(sorted(self.left_out.items())),
        }

    def fallback(self, brotli_quality: int = BROTLI_QUALITY) -> Fallback:
        """CPU work (compressing): call it off the event loop."""
        bundle = Bundle.create(
            f"fallback:{self.version}",
            self.code,
            self.sourcemap,
            etag_prefix=ETAG_PREFIX,
            brotli_quality=brotli_quality,
        )
        return Fallback(
            self.version, bundle, frozenset(self.names), dict(self.left_out), dict(self.excluded)
        )


def write_fallback(directory: Path, options: BuildOptions, build: FallbackBuild) -> None:
    """Write the three files into ``directory`` (replaced whole, by one rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{build.version}-", dir=directory.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the service may run as another user
    (staging / BUNDLE).write_bytes(build.code)
    (staging / SOURCE_MAP).write_bytes(build.sourcemap)
    (staging / MANIFEST).write_text(json.dumps(build.manifest(options), indent=1) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(staging, directory)


SHARED_MAGIC = b"bundler-fallback-1\n"


def shared_name(identity_: dict[str, Any]) -> str:
    """The fallback's name in the shared tier: what it must match, hashed."""
    return "fb:" + hashlib.sha256(json.dumps(identity_, sort_keys=True).encode()).hexdigest()


def encode_shared(build: FallbackBuild, options: BuildOptions) -> bytes:
    header = {
        "manifest": build.manifest(options),
        "code": [len(build.code), hashlib.sha256(build.code).hexdigest()],
        "sourcemap": [len(build.sourcemap), hashlib.sha256(build.sourcemap).hexdigest()],
    }
    return SHARED_MAGIC + json.dumps(header).encode() + b"\n" + build.code + build.sourcemap


def decode_shared(raw: bytes, wanted: dict[str, Any], plan: Plan) -> FallbackBuild | None:
    """The fallback in a shared value, if whole (every part's length and SHA-256) and built
    from this source the same way; None otherwise."""
    try:
        if not raw.startswith(SHARED_MAGIC):
            return None
        end = raw.index(b"\n", len(SHARED_MAGIC))
        header = json.loads(raw[len(SHARED_MAGIC) : end])
        meta = header["manifest"]
        (code_len, code_sha), (map_len, map_sha) = header["code"], header["sourcemap"]
        code = raw[end + 1 : end + 1 + code_len]
        sourcemap = raw[end + 1 + code_len :]
        if len(code) != code_len or len(sourcemap) != map_len:
            return None
        if hashlib.sha256(code).hexdigest() != code_sha:
            return None
        if hashlib.sha256(sourcemap).hexdigest() != map_sha:
            return None
        if {k: meta.get(k) for k in wanted} != wanted:
            return None
        return FallbackBuild(
            version=wanted["version"],
            code=code,
            sourcemap=sourcemap,
            names=list(meta["names"]),
            left_out=dict(meta.get("left_out", {})),
            excluded=dict(meta.get("not_candidates", {})),
            max_bytes=plan.max_bytes,
            operator_digest=plan.operator_digest,
            source_sha256=wanted["source_sha256"],
        )
    except (ValueError, KeyError, TypeError):
        return None


def read_fallback(
    directory: Path,
    version: str,
    options: BuildOptions,
    source_sha256: str,
    plan: Plan,
) -> FallbackBuild | None:
    """The fallback in ``directory``, if it was built from this source the same way."""
    try:
        meta = json.loads((directory / MANIFEST).read_text())
        wanted = identity(version, options, source_sha256, plan.max_bytes, plan.operator_digest)
        if {k: meta.get(k) for k in wanted} != wanted:
            logger.warning(
                "stored fallback built from another source or with other options; rebuilt",
                extra={"version": version, "dir": directory.name},
            )
            return None
        return FallbackBuild(
            version=version,
            code=(directory / BUNDLE).read_bytes(),
            sourcemap=(directory / SOURCE_MAP).read_bytes(),
            names=list(meta["names"]),
            left_out=dict(meta.get("left_out", {})),
            excluded=dict(meta.get("not_candidates", {})),
            max_bytes=plan.max_bytes,
            operator_digest=plan.operator_digest,
            source_sha256=source_sha256,
        )
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


async def build_fallback(
    builder: Builder,
    root: Path,
    version: str,
    options: BuildOptions,
    plan: Plan,
    early: Callable[[FallbackBuild], Awaitable[None]] | None = None,
) -> FallbackBuild:
    """Choose and build the fallback of the version whose source is at ``root`` (held in use).

    A survey build measures the most wanted candidates (bundler.survey); the
    selection within the budget is then built once more, with its source map, unless
    the survey was made with its map, all of it built and it fits: its bundle is the
    fallback.

    ``early`` (the service, where pages wait) is first handed a quick first part: a
    survey of the most wanted candidates only, made with its map, that usually builds
    and fits (one esbuild run). The complete selection, which can skip costly modules
    for cheaper ones further down (81% of a date-fns storm's requests covered against
    56%), follows.
    """
    candidates = await asyncio.to_thread(version_candidates, root)
    package = await asyncio.to_thread(read_package_json, root)
    ranked = rank(candidates, plan.operator, plan.popular, entry_point_paths(package))
    if not ranked:
        raise BuildFailed(f"version {version} has no JavaScript modules")
    quick = None
    if early is not None and plan.previous:
        first_count = survey_prefix(ranked, candidates, FIRST_SURVEY_FACTOR * plan.max_bytes)
        # A package the first survey takes whole gets its whole fallback from that one run.
        if first_count < len(ranked) and _still_wanted(plan, ranked):
            quick = await _as_before(builder, root, version, options, plan, candidates)
    if early is not None and quick is not None:
        await early(quick)
    elif early is not None:
        likely = [name for name in ranked if name not in plan.failed_before]
        count = survey_prefix(likely, candidates, FIRST_SURVEY_FACTOR * plan.max_bytes)
        survey = await run_survey(
            builder, root, version, likely[:count], options, candidates, fallback_map_url(version)
        )
        selection = select(likely, survey, plan.max_bytes)
        output = _survey_as_fallback(survey, selection, plan.max_bytes)
        if count == len(ranked) and output is not None:  # the whole package: done
            return _fallback_build(version, output, selection, candidates, plan)
        if output is None and selection.names:
            # Some of the surveyed files do not build (rxjs ships TypeScript sources that
            # do not build on their own), so the survey bundle is not the fallback: what
            # does build is, one esbuild run later, rather than after the whole selection.
            output = await _build_selection(builder, root, version, options, selection, candidates)
            if output is not None and len(output.code) > plan.max_bytes:
                output = None
        if output is not None:
            await early(_fallback_build(version, output, selection, candidates, plan))
    factor = SURVEY_SOURCE_FACTOR
    for attempt in range(MAX_SURVEYS):
        count = survey_prefix(ranked, candidates, factor * plan.max_bytes)
        # The first survey, or one of everything, may turn out to be the fallback itself
        # (all of it builds and fits): then it is made with its source map.
        may_fit = (attempt == 0 and early is None) or count == len(ranked)
        survey = await run_survey(
            builder,
            root,
            version,
            ranked[:count],
            options,
            candidates,
            fallback_map_url(version) if may_fit else None,
        )
        selection = select(ranked, survey, plan.max_bytes)
        if count == len(ranked) or selection.estimated_bytes >= BUDGET_FILLED * plan.max_bytes:
            break
        factor *= 4
    if not selection.names:
        first = next(iter(selection.left_out.items()), ("", "nothing to build"))
        raise BuildFailed(
            f"version {version} has no module that builds within the fallback budget "
            f"({first[0]}: {first[1]})"
        )
    output = _survey_as_fallback(survey, selection, plan.max_bytes)
    if output is None:
        registrations = [(name, candidates.files[name]) for name in selection.names]
        output = await builder.build(BuildJob.fallback(version, registrations, options), root)
    if len(output.code) > plan.max_bytes:  # the estimate was short: aim lower, once
        trimmed = select(ranked, survey, plan.max_bytes * plan.max_bytes // len(output.code))
        if trimmed.names:
            selection = trimmed
            registrations = [(name, candidates.files[name]) for name in selection.names]
            output = await builder.build(BuildJob.fallback(version, registrations, options), root)
    return _fallback_build(version, output, selection, candidates, plan)


def _still_wanted(plan: Plan, ranked: Sequence[str]) -> bool:
    """The previous fallback holds most of as many of this version's most wanted modules
    as it has names: it was chosen by the same traffic (some of the most wanted do not
    fit, and cheaper ones further down took their place). One built before pages came
    (a fresh start) holds entry points instead, and is surveyed past."""
    if not plan.previous:
        return False
    asked = {*plan.popular, *plan.operator}
    top = [name for name in ranked if name in asked][: len(plan.previous)]
    held = set(plan.previous)
    return sum(1 for name in top if name in held) >= STILL_WANTED * len(top)


async def _as_before(
    builder: Builder,
    root: Path,
    version: str,
    options: BuildOptions,
    plan: Plan,
    candidates: Candidates,
) -> FallbackBuild | None:
    """The first part as the previous fallback was, of the names this version has too,
    if that builds and fits (one esbuild run); None otherwise (then it is surveyed)."""
    names = [name for name in plan.previous if name in candidates.files]  # sorted
    if not names:
        return None
    selection = Selection(names, 0, {})
    output = await _build_selection(builder, root, version, options, selection, candidates)
    if output is None or len(output.code) > plan.max_bytes:
        return None
    return _fallback_build(version, output, selection, candidates, plan)


async def _build_selection(
    builder: Builder,
    root: Path,
    version: str,
    options: BuildOptions,
    selection: Selection,
    candidates: Candidates,
) -> BuildOutput | None:
    registrations = [(name, candidates.files[name]) for name in selection.names]
    try:
        return await builder.build(BuildJob.fallback(version, registrations, options), root)
    except (BuildFailed, UnknownModule) as exc:
        logger.warning(
            "fallback's first part did not build",
            extra={"version": version, "error": exc.summary(300)},
        )
        return None


def _survey_as_fallback(survey: Survey, selection: Selection, max_bytes: int) -> BuildOutput | None:
    """The survey's own bundle, when it can be the fallback: made with its map, every
    name it registered selected (so nothing failed), within the budget."""
    output: BuildOutput | None = survey.output
    if output is None or output.sourcemap is None or len(output.code) > max_bytes:
        return None
    if tuple(selection.names) != tuple(sorted(survey.names)):
        return None
    return output


def _fallback_build(
    version: str,
    output: BuildOutput,
    selection: Selection,
    candidates: Candidates,
    plan: Plan,
) -> FallbackBuild:
    left_out = dict(selection.left_out)
    for name in plan.operator:
        if name not in candidates.files:
            left_out[name] = f"{UNKNOWN}: no JavaScript module of this version has this name"
    assert output.sourcemap is not None
    return FallbackBuild(
        version=version,
        code=output.code,
        sourcemap=output.sourcemap,
        names=selection.names,
        left_out=left_out,
        excluded=candidates.excluded,
        max_bytes=plan.max_bytes,
        operator_digest=plan.operator_digest,
    )


def saved_popularity(settings: Settings) -> list[str]:
    """Outside the service (build-fallback, warm): what the data dir's sketch holds, if any."""
    combos = PopularCombos(Path(settings.data_dir) / COMBOS_FILE, settings.combos_top_k)
    combos.load()
    return combos.popular_modules()


def offline_plan(settings: Settings, version: str) -> Plan:
    """The plan of a fallback built outside the service: the same list and budget."""
    operator = OperatorList.load(settings.fallback_modules)
    return Plan.make(version, settings.fallback_max_bytes, operator, saved_popularity(settings))


class FallbackStore:
    """Loads (or builds, ahead of tailored builds) one fallback per version, once.

    A fallback is usable as soon as esbuild has made it: it is served with quick
    compression at first, while brotli 11 and the write to disk finish behind it.
    """

    def __init__(
        self,
        static_dir: Path | None,
        data_dir: Path,
        builder: Builder,
        source: SourceStore,
        options: BuildOptions,
        max_versions: int,
        *,
        max_bytes: int,
        operator: OperatorList | None = None,
        popular: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.static_dir = static_dir
        self.built_dir = data_dir / BUILT_FALLBACKS
        self.builder = builder
        self.source = source
        self.options = options
        self.max_bytes = max_bytes
        self.operator = operator or OperatorList()
        self.popular = popular
        # The shared tier (Redis) of a fleet: a fallback one replica built, others take.
        self.shared: SharedTier | None = None
        self._loaded: LRUCache[str, Fallback] = LRUCache(maxsize=max_versions)
        self._failures: TTLCache[str, BundlerError] = TTLCache(maxsize=64, ttl=FAILURE_TTL_S)
        self.flight: SingleFlight[str, Fallback | None] = SingleFlight("fallback")
        self._next_publish: dict[str, asyncio.Future[None]] = {}
        self._partial: set[str] = set()  # versions whose first part is out, the rest coming
        self._background: set[asyncio.Task[None]] = set()
        self._recompressing: set[asyncio.Task[None]] = set()
        # version -> part ("first", "all") -> seconds from its first need to its use
        self.ready_seconds: LRUCache[str, dict[str, float]] = LRUCache(maxsize=max_versions)
        self.builds = 0
        # The last whole fallback made ready: at a release, the old version's, which the
        # new version's first part starts from.
        self._last_whole: Fallback | None = None
        # Called the moment a fallback is loaded (the service reorders its queue then).
        self.on_loaded: Callable[[Fallback], None] | None = None

    def loaded(self, version: str) -> Fallback | None:
        return self._loaded.get(version)

    def failure(self, version: str) -> BundlerError | None:
        return self._failures.get(version)

    def __len__(self) -> int:
        return len(self._loaded)

    def all_loaded(self) -> list[Fallback]:
        return list(self._loaded.values())

    def plan(self, version: str) -> Plan:
        """Read on the loop: the popularity sketch is not safe to read from a thread."""
        previous = (
            self._last_whole if self._last_whole and self._last_whole.version != version else None
        )
        return Plan.make(version, self.max_bytes, self.operator, self.popular(), previous)

    def ensure(self, version: str) -> None:
        """Start loading or building the version's fallback unless it is under way; no wait."""
        if self._loaded.get(version) is None and version not in self._failures:
            self.flight.ensure(version, lambda: self._load_or_build(version))

    async def get(self, version: str, *, retry: bool = False) -> Fallback | None:
        """The version's fallback; None when it cannot be built (the request then waits
        for its tailored build). VersionNotFound and pull errors propagate.
        ``retry`` ignores a remembered failure."""
        fallback = self._loaded.get(version)
        if fallback is not None:
            return fallback
        if version in self._failures and not retry:
            return None
        return await self.flight.do(version, lambda: self._load_or_build(version))

    async def _load_or_build(self, version: str) -> Fallback | None:
        plan = self.plan(version)
        started = time.perf_counter()
        published: Fallback | None = None
        first_part: Fallback | None = None

        async def early(build: FallbackBuild) -> None:
            nonlocal first_part
            first_part = self._publish(await asyncio.to_thread(build.fallback))
            self._partial.add(version)
            self._log_ready(first_part, time.perf_counter() - started, built=True, first_part=True)

        try:
            # The slot is claimed as soon as the source is there, ahead of the tailored
            # builds that waited for the same pull (a stored fallback gives it back at once).
            async with (
                self.source.use(version) as root,
                self.builder.holding(Priority.FALLBACK),
            ):
                # The version's digest (taken once per version, by the source): a stored
                # or shared fallback is used only for the exact source it was built from.
                digest = await self.source.digest(version)
                stored = await asyncio.to_thread(self._read_stored, version, plan, digest)
                if stored is None and self.shared is not None:
                    stored = await self._read_shared(version, plan, digest)
                if stored is not None:
                    build = stored
                else:
                    build = await build_fallback(
                        self.builder, root, version, self.options, plan, early
                    )
                    # Published before the slot passes on, so the queue can be
                    # reordered for it first (on_loaded).
                    published = self._publish(await asyncio.to_thread(build.fallback))
                    self.builds += 1
                    self._in_background(self._write(dataclass_replace(build, source_sha256=digest)))
        except (BuildFailed, UnknownModule) as exc:
            if first_part is not None:  # what the pages had keeps serving; not stored
                logger.error(
                    "fallback left at its first part",
                    extra={"version": version, "error": exc.summary()},
                )
                return first_part
            self._failures[version] = exc
            logger.error(
                "no fallback for this version",
                extra={"version": version, "error": exc.summary()},
            )
            return None
        finally:
            self._partial.discard(version)
            waiting = self._next_publish.pop(version, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(None)
        fallback = published or self._publish(await asyncio.to_thread(build.fallback))
        recompress = asyncio.create_task(self._recompress(build, fallback))
        self._recompressing.add(recompress)
        recompress.add_done_callback(self._recompressing.discard)
        self._log_ready(fallback, time.perf_counter() - started, built=stored is None)
        self._last_whole = fallback
        return fallback

    def published(self, version: str) -> asyncio.Future[None]:
        """Done when the version next has a fallback (its first part, or all of it), or
        its build ends without one."""
        future = self._next_publish.get(version)
        if future is None or future.done():
            future = self._next_publish[version] = asyncio.get_running_loop().create_future()
        return future

    def improving(self, version: str) -> asyncio.Future[None] | None:
        """Done when the version's fallback, served in a first part now, is complete (its
        next publication, or the build's end): a page its first part does not cover may
        find itself in the rest. None when no rest is coming."""
        return self.published(version) if version in self._partial else None

    def _publish(self, fallback: Fallback) -> Fallback:
        self._failures.pop(fallback.version, None)
        self._loaded[fallback.version] = fallback
        waiting = self._next_publish.pop(fallback.version, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if self.on_loaded is not None:
            self.on_loaded(fallback)
        return fallback

    def _read_stored(self, version: str, plan: Plan, digest: str) -> FallbackBuild | None:
        """A prebuilt or earlier-built fallback of this exact source."""
        dirs = [d / version for d in (self.static_dir, self.built_dir) if d is not None]
        dirs = [d for d in dirs if (d / MANIFEST).exists()]
        if not dirs:
            return None
        for directory in dirs:
            build = read_fallback(directory, version, self.options, digest, plan)
            if build is not None:
                return build
        return None

    def _log_ready(
        self, fallback: Fallback, seconds: float, *, built: bool, first_part: bool = False
    ) -> None:
        parts = self.ready_seconds.get(fallback.version) or {}
        parts["first" if first_part else "all"] = seconds
        parts.setdefault("first", seconds)
        self.ready_seconds[fallback.version] = parts
        failing = [
            name for name, why in fallback.left_out.items() if not why.startswith("over_budget")
        ]
        logger.info(
            "fallback's first part ready; the rest follows" if first_part else "fallback ready",
            extra={
                "version": fallback.version,
                "bytes": len(fallback.bundle.code),
                "modules": len(fallback.names),
                "left_out": reason_counts(fallback.left_out),
                "not_built": failing[:LOG_NAMES] + (["..."] if len(failing) > LOG_NAMES else []),
                "details": f"GET /fallback.json?v={fallback.version}",
                "built": built,
                "duration_ms": round(seconds * 1000),
            },
        )

    def _in_background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("fallback background work failed", extra={"error": repr(task.exception())})

    async def _recompress(self, build: FallbackBuild, quick: Fallback) -> None:
        """Brotli 11 (about 70 x slower than 5): a fallback is built once, served often.
        Not while builds wait: 0.5 s of a CPU for date-fns's fallback, which a release's
        backlog of tailored builds needs more (brotli 5 serves meanwhile)."""
        waited = 0.0
        while (self.builder.busy or self.builder.queued) and waited < RECOMPRESS_MAX_WAIT_S:
            await asyncio.sleep(IDLE_POLL_S)
            waited += IDLE_POLL_S
        best = await asyncio.to_thread(build.fallback, BROTLI_QUALITY_MAX)
        if self._loaded.get(build.version) is quick:
            self._loaded[build.version] = best

    async def _write(self, build: FallbackBuild) -> None:
        if self.shared is not None:
            wanted = identity(
                build.version,
                self.options,
                build.source_sha256,
                build.max_bytes,
                build.operator_digest,
            )
            value = await asyncio.to_thread(encode_shared, build, self.options)
            await self.shared.put_raw(shared_name(wanted), value)
        await asyncio.to_thread(write_fallback, self.built_dir / build.version, self.options, build)

    async def _read_shared(self, version: str, plan: Plan, digest: str) -> FallbackBuild | None:
        """The fallback another replica built from this exact source, the same way."""
        assert self.shared is not None
        wanted = identity(version, self.options, digest, plan.max_bytes, plan.operator_digest)
        raw = await self.shared.get_raw(shared_name(wanted))
        if raw is None:
            return None
        build = await asyncio.to_thread(decode_shared, raw, wanted, plan)
        if build is None:
            logger.error("corrupt shared fallback; rebuilt", extra={"version": version})
            await self.shared.delete_raw(shared_name(wanted))
            return None
        # Kept on this replica's disk too, as if built here (the first use does not wait).
        self._in_background(
            asyncio.to_thread(write_fallback, self.built_dir / version, self.options, build)
        )
        return build

    async def close(self) -> None:
        """Stops builds under way; lets the writes (and recompression) of built ones finish,
        so the next start finds them on disk."""
        await self.flight.close()
        for task in self._recompressing:  # memory only: nothing to keep
            task.cancel()
        await asyncio.gather(*self._background, *self._recompressing, return_exceptions=True)


def describe_fallback(summary: Mapping[str, Any]) -> str:
    """One line for an operator: size, modules, and what was left out and why."""
    left = ", ".join(f"{n} {reason}" for reason, n in sorted(summary["left_out_counts"].items()))
    return (
        f"fallback of {summary['version']}: {summary['bytes']} bytes, {summary['modules']} "
        f"module names; left out: {left or 'nothing'}"
    )
