"""The request path without HTTP.

spec -> memory cache -> disk cache -> shed? -> SingleFlight(key) build, waited for up
to the fallback budget -> the tailored bundle, or the version's fallback while the
build fills the cache. Nobody waits on a fallback build: a version whose fallback is
not ready yet starts it (once, ahead of all tailored builds) and the request takes
whichever comes first after its budget, its own bundle or the fallback.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Sequence

from cachetools import TTLCache

from bundler import css
from bundler.build.assets import find_asset
from bundler.bundle import Bundle
from bundler.carry.carrier import Carrier
from bundler.clients import ClientIds
from bundler.components import Components
from bundler.errors import (
    BuildFailed,
    BundlerError,
    ConfigError,
    NotFound,
    Overloaded,
    Unavailable,
    UnknownModule,
)
from bundler.fallback.model import Fallback
from bundler.fleet.builds import shared_or_lease
from bundler.fleet.lease import Lease
from bundler.flight import SingleFlight
from bundler.limits import ClientLimits
from bundler.metrics import LagMonitor
from bundler.service.building import tailored_bundle
from bundler.service.deferred import DeferredBuilds
from bundler.service.derived import DerivedForms
from bundler.service.figures import metric_values
from bundler.service.health import DataDirHealth
from bundler.service.maps import SourceMaps
from bundler.service.parsing import Queries
from bundler.service.race import Answer, Mode, answer_miss
from bundler.service.readiness import prepare_default
from bundler.service.releases import Releases
from bundler.slots import Priority
from bundler.spec import BundleSpec, validate_version

logger = logging.getLogger(__name__)

# Distinct failing combinations remembered at once; a storm of one broken
# combination costs one esbuild run per build_failure_ttl_s, not one per request.
MAX_REMEMBERED_FAILURES = 1024


class BundleService:
    def __init__(self, parts: Components, lag: LagMonitor) -> None:
        settings, source, builder = parts.settings, parts.source, parts.builder
        fallbacks = parts.fallbacks
        self.settings = settings
        self.source = source
        self.builder = builder
        self.tiers = parts.tiers
        self.fleet = parts.fleet
        self.combos = parts.combos
        self.fallbacks = fallbacks
        self.lag = lag
        self.options = parts.options
        self.default_version = settings.default_version or self._newest_version()
        self.flight: SingleFlight[str, Bundle] = SingleFlight(
            "build", stagger=settings.flight_release == "staggered"
        )
        self.failures: TTLCache[str, BundlerError] = TTLCache(
            maxsize=MAX_REMEMBERED_FAILURES, ttl=settings.build_failure_ttl_s
        )
        self.requests: collections.Counter[str] = collections.Counter()
        # Bundle answers by form: iife (/bundle.js, /bundle.css), esm (/bundle.mjs).
        self.forms_asked: collections.Counter[str] = collections.Counter()
        self.draining = False
        self._startup: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self.health = DataDirHealth(builder.scratch_dir)
        self.forms = DerivedForms()
        self.deferred = DeferredBuilds(
            self.flight, self.build, room=builder.pool_size * builder.batch_max
        )
        self.queries = Queries(settings, source, self.options, self.default_version)
        fallbacks.on_loaded = self._promote_uncovered
        self.maps = SourceMaps(source, builder, self.fleet, self.tiers)
        self.releases = Releases(self)
        self.carrier = Carrier(
            source,
            self.tiers,
            builder.esbuilds.binary_version,
            enabled=settings.carry_over == "on",
            carry_from=lambda: (self.default_version,),
        )
        self.lease_waits = 0
        self.clients = ClientIds(settings.trusted_proxies, settings.client_header)
        self.limits = ClientLimits(
            settings.client_requests_per_s,
            settings.client_builds_per_s,
            settings.client_build_burst,
        )

    def _newest_version(self) -> str:
        newest = self.source.newest_version()
        if newest is None:
            raise ConfigError(
                f"no default version: set --default-version (source: {self.source.describe()})"
            )
        return newest

    @property
    def ready(self) -> bool:
        """Every bundle request can be answered now: the default fallback is loaded and
        the process is not draining. A broken disk does not count: with the fallback
        loaded, a pod serves as well on it as without it (from memory, and the fallback
        for what it cannot build), whether the disk broke before its start or after."""
        return not self.draining and self.fallbacks.loaded(self.default_version) is not None

    @property
    def degraded(self) -> str | None:
        """What is wrong but does not stop the pod serving (/readyz says it)."""
        if self.health.problem is not None:
            return self.health.problem
        if self.tiers.disk_failing:
            return "the disk cache's writes fail (full or read-only data dir)"
        return None

    async def start(self) -> None:
        """A local source's default version is checked now (a wrong one stops the start);
        its fallback is loaded, or built, in the background: /readyz waits for it."""
        await self.health.start()
        if self.health.problem is None:
            removed = await asyncio.to_thread(self.builder.clean_scratch)
            if removed:
                logger.info("removed stale build scratch dirs", extra={"count": removed})
        try:
            validate_version(self.default_version)
        except BundlerError as exc:
            raise ConfigError(f"default version: {exc.message}") from None
        self.source.pin(self.default_version)
        await self.source.start()
        if not self.source.remote:
            try:
                async with self.source.use(self.default_version):
                    pass
            except BundlerError as exc:
                raise ConfigError(f"default version: {exc.message}") from None
        await self.tiers.start()  # the fleet's Redis never fails the start: it may come later
        await asyncio.to_thread(self.combos.load)
        self._saver = asyncio.create_task(
            self.combos.save_every(self.settings.combos_save_interval_s), name="save-combos"
        )
        self._startup = asyncio.create_task(
            prepare_default(self.fallbacks, self.default_version), name="prepare-default"
        )
        self.releases.start()
        self.limits.start()

    async def parse(
        self,
        pairs: Sequence[tuple[str, str]],
        other_params: frozenset[str] = frozenset(),
        module: bool = False,
    ) -> tuple[BundleSpec, bool]:
        """The request's spec, bound to its version's content (bundler.service.parsing);
        ``module``: the module form's (/bundle.mjs). A version's first request carries its
        most requested bundles over, behind it."""
        spec, pinned = await self.queries.parse(pairs, other_params, module)
        if not self.carrier.swept(spec.version):
            self.releases.arrived(spec.version, spec.content)
        return spec, pinned

    def queue_full(self) -> bool:
        """Tailored builds admitted (running, queued, or created but not yet queued: a
        burst parsed in one loop iteration admits all of it before any build task runs);
        deferred builds run in the room left and never count against a page."""
        limit = self.settings.queue_max
        admitted = len(self.flight) - self.deferred.running
        return limit is not None and admitted >= self.builder.pool_size + limit

    def _promote_uncovered(self, fallback: Fallback) -> None:
        """A new fallback for the version (or all of one whose first part was out):
        queued builds for pages it does not cover go first, as those pages have no
        other answer; builds that went first for that reason and are covered now go
        back among the others."""
        for job, priority in self.builder.queued_jobs(fallback.version):
            covered = fallback.covers(tuple(name for name, _ in job.registrations))
            if priority > Priority.UNCOVERED and not covered:
                self.builder.move(job.key, Priority.UNCOVERED)
            elif priority == Priority.UNCOVERED and covered:
                self.builder.move(job.key, Priority.TAILORED)

    def settled(self, key: str) -> bool:
        """Built, or known to fail: a deferred build of it is not needed."""
        return self.tiers.memory.peek(key) is not None or key in self.failures

    async def variant(self, bundle: Bundle, kind: str, map_url: str | None = None) -> Bundle:
        return await self.forms.variant(bundle, kind, map_url)

    async def document(self, name: str, data: bytes) -> Bundle:
        return await self.forms.document(name, data)

    async def body(self, bundle: Bundle, encoding: str) -> bytes:
        return await self.forms.body(bundle, encoding)

    def lagging(self) -> bool:
        threshold_ms = self.settings.shed_lag_ms
        return threshold_ms > 0 and self.lag.smoothed_s * 1000 > threshold_ms

    async def answer(
        self, spec: BundleSpec, waited_s: float = 0.0, client: str | None = None
    ) -> Answer:
        """``waited_s``: spent on the request already (its version's pull): taken from the
        fallback budget, which counts from the request's arrival. ``client``: who asks
        (bundler.clients), whose build budget a cold build takes from; None: nobody's."""
        bundle = self.tiers.hit(spec.key)
        if bundle is not None:  # the warm hit, without a coroutine more than it needs
            answer = Answer(bundle, Mode.HIT)
        else:
            answer = await answer_miss(self, spec, waited_s, client)
        if spec.options.module and answer.fallback is not None:
            # One fallback per version for both forms: the module form is the classic
            # one with exports added (bundler.service.derived), no build of its own.
            module_form = await self.forms.module_fallback(answer.fallback, self.options)
            answer = dataclasses.replace(answer, bundle=module_form)
        # Only what was answered with a bundle: junk and failures never reach the warm-up;
        # and each client once an hour, so that none can buy a place in it.
        if self.combos.first_ask(client, spec.modules):
            self.combos.record(spec.modules)
            self.fleet.record(spec.modules)
        self.requests[answer.mode.value] += 1
        self.forms_asked[spec.options.format] += 1
        return answer

    async def cached(self, spec: BundleSpec) -> Bundle | None:
        """Memory, then disk (bundler.tiers.tiered); known to the carry-over from now."""
        bundle = await self.tiers.cached(spec.key)
        if bundle is not None:
            self.carrier.built(spec, bundle)
        return bundle

    async def build(self, spec: BundleSpec, priority: Priority = Priority.TAILORED) -> Bundle:
        """The flight of ``spec``'s key: its bundle from the shared tier or built here.
        A request that missed the memory tier may start it just after another flight of
        the same key ended (it was looking in the disk tier meanwhile): what that one
        put in memory is taken, not built again."""
        landed = self.tiers.hit(spec.key)
        if landed is not None:
            return landed
        found, waits = await shared_or_lease(self.fleet, spec.key)
        self.lease_waits += waits
        if isinstance(found, Bundle):  # another replica built it
            self.tiers.lookups["shared_hit"] += 1
            self.deferred.freed()
            self.carrier.built(spec, found)
            self.tiers.keep(found)
            return found
        lease: Lease = found
        try:
            # Built for another version with the same inputs: no build (bundler.carry).
            bundle = await self.carrier.carry(spec) or await tailored_bundle(
                self.source, self.builder, spec, priority
            )
        except (BuildFailed, UnknownModule) as exc:
            self.failures[spec.key] = exc
            self.fail_lease(spec.key, lease)
            raise
        except BaseException:
            self.fail_lease(spec.key, lease)
            raise
        finally:
            self.deferred.freed()
        self.carrier.built(spec, bundle)
        self.tiers.keep(bundle, lease)
        return bundle

    def fail_lease(self, key: str, lease: Lease) -> None:
        """A build that ended without a bundle gives its lease back: another replica may
        take it (and meet the same error itself) instead of waiting for a bundle that is
        not coming, on a lease renewed for as long as this replica runs."""
        self.tiers.in_background(lease.release(), f"lease-release:{key}")

    async def built(self, spec: BundleSpec, priority: Priority = Priority.TAILORED) -> Bundle:
        """The tailored bundle, built if need be; never the fallback (source maps, warm-up)."""
        bundle = await self.cached(spec)
        if bundle is not None:
            return bundle
        failure = self.failures.get(spec.key)
        if failure is not None:
            raise failure
        if spec.key not in self.flight and self.queue_full():
            raise Overloaded("the build queue is full; retry in a moment")
        return await self.flight.do(spec.key, lambda: self.build(spec, priority))

    async def source_map(self, spec: BundleSpec) -> bytes:
        """The tailored bundle's source map: built by a second esbuild run on first request
        (esbuild makes the same code with or without it), then kept in memory and shared."""
        bundle = await self.built(spec)
        if bundle.sourcemap is not None:  # a disk entry written before maps were lazy
            return bundle.sourcemap
        return await self.maps.get(spec, bundle, of_css=False)

    async def asset(self, version: str, name: str) -> bytes:
        return await find_asset(self.builder.assets, self.source, version, name)

    async def css_source_map(self, spec: BundleSpec) -> bytes:
        """The source map of the tailored bundle's CSS, as /bundle.css serves it: made by
        the same second run as the bundle's own map."""
        bundle = await self.built(spec)
        if not css.has_css(bundle.code):
            raise NotFound(f"the modules of {spec.query} import no CSS: there is no CSS map")
        return await self.maps.get(spec, bundle, of_css=True)

    async def warm(self, spec: BundleSpec) -> str:
        """Build one combination ahead of its traffic, at the lowest priority."""
        if await self.cached(spec) is not None:
            return "cached"
        await self.built(spec, Priority.WARM)
        # Warmed means the fleet has it: answered once it is in the shared tier too.
        await self.tiers.shared_written(spec.key)
        return "carried" if self.carrier.carried_from(spec.key) else "built"

    def abort_waiters(self) -> int:
        """The shutdown deadline: every request still waiting for a build, a fallback or a
        pull is answered now (503, retry elsewhere) instead of being cut off."""
        error = Unavailable("the service is shutting down; retry")
        flights = (self.flight, self.maps.flight, self.fallbacks.flight)
        return sum(f.fail_waiters(error) for f in flights) + self.source.fail_waiters(error)

    def begin_drain(self) -> None:
        self.draining = True
        logger.info("draining: /readyz answers 503 from now on")

    async def close(self) -> None:
        self.draining = True
        for task in (self._startup, self._saver):
            if task is not None:
                task.cancel()
        self.deferred.close()
        self.health.close()
        try:
            await asyncio.to_thread(self.combos.save, self.combos.snapshot())
        except OSError as exc:  # a full or read-only disk must not fail the shutdown
            logger.error("could not save the popularity sketch", extra={"error": str(exc)})
        await self.flight.close()
        await self.maps.flight.close()
        await self.fallbacks.close()
        await self.builder.kill_all()
        await self.releases.close()
        await self.limits.close()
        await self.carrier.close()
        await self.source.close()
        await self.tiers.close()

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return metric_values(self)
