"""The answer to a miss: its own bundle if it is ready within the fallback budget;
after it, whichever comes first, the version's fallback (when it covers the page) or the
bundle. Nobody waits on a fallback build: a version whose fallback is not ready yet
starts it (once, ahead of all tailored builds), and the page takes whichever comes first.
Past the queue's bound, or while the loop lags, a covered page gets the fallback at once
(shed) and its build is deferred; an uncovered one's build goes first.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bundler.bundle import Bundle
from bundler.errors import BundlerError, DiskFault, TooManyRequests
from bundler.fallback.model import Fallback
from bundler.slots import Priority
from bundler.spec import BundleSpec

if TYPE_CHECKING:
    from bundler.service.core import BundleService


class Mode(enum.Enum):
    HIT = "hit"  # tailored, from the cache
    BUILT = "built"  # tailored, built within the fallback budget
    CARRIED = "carried"  # tailored, carried over from another version within the budget
    FALLBACK = "fallback"  # the build did not finish within the budget; it goes on
    SHED = "shed"  # queue full or loop lagging: the fallback, and no build
    LIMITED = "limited"  # the client is past its build budget: the fallback, and no build

    @property
    def tailored(self) -> bool:
        return self in (Mode.HIT, Mode.BUILT, Mode.CARRIED)


@dataclass(frozen=True)
class Answer:
    bundle: Bundle
    mode: Mode
    fallback: Fallback | None = None  # the version's fallback, when that is the answer


async def answer_miss(
    service: BundleService, spec: BundleSpec, waited_s: float, client: str | None = None
) -> Answer:
    """A miss in memory: the disk tier, the shared tier or its own build, raced against
    the version's fallback after the budget (``waited_s`` of it spent already). A build
    under way is joined for free; a new one takes one of ``client``'s build budget."""
    bundle = await service.cached(spec)
    if bundle is not None:
        return Answer(bundle, Mode.HIT)
    failure = service.failures.get(spec.key)
    if failure is not None:
        raise failure
    budget_ms = service.settings.fallback_budget_ms
    joining = spec.key in service.flight
    if not joining and client is not None:
        wait_s = service.limits.build(client)
        if wait_s:
            return _limited(service, spec, client, wait_s)
    if budget_ms == -1:  # never the fallback: every miss waits for its own bundle,
        # however long the queue (as documented: the operator chose waiting over a fallback)
        return made(service, await service.flight.do(spec.key, lambda: service.build(spec)))
    # Built once, ahead of every tailored build; nobody waits for it here.
    service.fallbacks.ensure(spec.version)
    fallback = service.fallbacks.loaded(spec.version)
    covered = fallback is not None and fallback.covers(spec.modules)
    budget_s = max(0.0, budget_ms / 1000 - waited_s)
    if not joining and fallback is not None and (service.queue_full() or service.lagging()):
        if covered:  # shed: the fallback at once; the build later, when there is room
            service.deferred.defer(spec, service.settled)
            return Answer(fallback.bundle, Mode.SHED, fallback)
        # Nothing else can answer this page but its build, ahead of those that have
        # one (or the rest of a fallback whose first part is out): no budget to wait.
        budget_s = 0
    # No fallback yet (a release's first seconds): nothing is shed to a fallback that
    # may take longer than the builds; each miss races its own build against it.
    priority = Priority.UNCOVERED if fallback is not None and not covered else Priority.TAILORED
    build_fn = functools.partial(service.build, spec, priority)
    if joining:
        service.builder.promote(spec.key, priority)  # a warm-up's build a page now waits for
    # Started now: cancelling our wait below must never cancel the build itservice.
    service.flight.ensure(spec.key, build_fn)
    build = asyncio.ensure_future(service.flight.do(spec.key, build_fn))
    try:
        return await _race(service, spec, build, budget_s)
    finally:
        if not build.done():
            build.cancel()  # only our wait: the build goes on and fills the cache


def _limited(service: BundleService, spec: BundleSpec, client: str, wait_s: float) -> Answer:
    """Past its build budget a client's miss starts no build, so it delays nobody's:
    the version's fallback where it covers the page, else a 429."""
    service.fallbacks.ensure(spec.version)  # one per version, whoever asks
    fallback = service.fallbacks.loaded(spec.version)
    if fallback is not None and fallback.covers(spec.modules):
        return Answer(fallback.bundle, Mode.LIMITED, fallback)
    raise TooManyRequests(
        f"{client} has started {service.settings.client_builds_per_s:g} new bundles a second "
        f"for a while: {spec.query} is not built yet and the version's fallback does not "
        "cover it; retry after the Retry-After seconds",
        wait_s,
    )


def made(service: BundleService, bundle: Bundle) -> Answer:
    """A bundle this request's miss made: built, or carried over (bundler.carry)."""
    return Answer(bundle, Mode.CARRIED if service.carrier.is_carried(bundle) else Mode.BUILT)


async def _race(
    service: BundleService, spec: BundleSpec, build: asyncio.Future[Bundle], budget_s: float
) -> Answer:
    """The tailored bundle if it is ready within the budget; after it, whichever
    comes first: the fallback (if it covers the request) or the tailored bundle."""
    fallback = service.fallbacks.loaded(spec.version)
    if fallback is None or budget_s > 0:
        await asyncio.wait({build}, timeout=budget_s)
    if build.done():
        return await _built_or_fallback(service, spec, build)
    fallback = service.fallbacks.loaded(spec.version)
    if fallback is None and service.fallbacks.failure(spec.version) is None:
        pending = asyncio.ensure_future(_fallback(service, spec.version))
        try:
            # A large fallback's first part is published before the build ends.
            first: set[asyncio.Future[Any]] = {
                build,
                pending,
                service.fallbacks.published(spec.version),
            }
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pending.cancel()
        if build.done():
            return await _built_or_fallback(service, spec, build)
        fallback = service.fallbacks.loaded(spec.version)
    if fallback is not None and fallback.covers(spec.modules):
        return Answer(fallback.bundle, Mode.FALLBACK, fallback)
    improving = service.fallbacks.improving(spec.version)
    if improving is not None:  # only its first part is out: the rest may cover this page
        rest: set[asyncio.Future[Any]] = {build, improving}
        await asyncio.wait(rest, return_when=asyncio.FIRST_COMPLETED)
        fallback = service.fallbacks.loaded(spec.version)
        if not build.done() and fallback is not None and fallback.covers(spec.modules):
            return Answer(fallback.bundle, Mode.FALLBACK, fallback)
    await asyncio.wait({build})
    return await _built_or_fallback(service, spec, build)


async def _built_or_fallback(
    service: BundleService, spec: BundleSpec, build: asyncio.Future[Bundle]
) -> Answer:
    """The finished build; a build error is raised, not hidden, except a disk fault
    (the service's, not the request's): then the fallback, where it covers."""
    try:
        return made(service, build.result())
    except DiskFault:
        fallback = await _fallback(service, spec.version)
        if fallback is not None and fallback.covers(spec.modules):
            return Answer(fallback.bundle, Mode.FALLBACK, fallback)
        raise


async def _fallback(service: BundleService, version: str) -> Fallback | None:
    """The version's fallback once it exists; None if it cannot be had (the
    request's own build reports why, e.g. an unknown version)."""
    try:
        return await service.fallbacks.get(version)
    except BundlerError:
        return None
