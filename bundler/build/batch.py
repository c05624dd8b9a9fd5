"""Tailored builds of one version that wait for a slot together go to esbuild together.

The first to get a slot takes up to ``batch_max`` of the others along: one esbuild run
with one entry point per bundle. esbuild parses each shared file once and builds the
entry points in parallel; each bundle is byte-for-byte what it would be alone. Nobody
waits to form a batch: an idle pool builds at once, alone; batches form only from a
queue that exists anyway. A batch that fails is not picked apart: each of its builds
runs again alone (RunAlone), so every error is the one its own request would get, and
files that failed stay out of batches for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cachetools import TTLCache

from bundler.build.jobs import BuildJob, BuildOutput
from bundler.errors import BuildCrashed, BuildFailed, BuildTimeout, DiskFault, UnknownModule
from bundler.slots import Priority, PrioritySlots
from bundler.spec import BuildOptions

logger = logging.getLogger(__name__)

# A file seen in a build that failed keeps its builds out of batches this long.
SUSPECT_TTL_S = 300.0
MAX_SUSPECTS = 4096

RunMany = Callable[[Sequence[BuildJob], Path], Awaitable[list[BuildOutput | BuildFailed]]]
Count = Callable[[BuildJob, float, object], None]


@dataclass(eq=False)
class Waiting:
    """A tailored build queued for a slot, which another's batch may take along."""

    job: BuildJob
    root: Path
    ticket: asyncio.Future[bool]  # True: its own slot; False: taken into a batch
    outcome: asyncio.Future[BuildOutput]
    priority: Priority
    order: int

    @property
    def group(self) -> tuple[str, BuildOptions, str, bool]:
        """Builds that can share one esbuild run: same version, options and output kind."""
        return (self.job.version, self.job.options, str(self.root), self.job.with_map)


class RunAlone(Exception):
    """The batch this build was in failed: it runs again on its own."""


def settle(future: asyncio.Future[BuildOutput], outcome: BuildOutput | BaseException) -> None:
    if future.done():
        return  # its waiter was cancelled
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class BatchQueue:
    """The tailored builds waiting for a slot, grouped by what can share a run."""

    def __init__(
        self, slots: PrioritySlots, batch_max: int, run: RunMany, count: Count, timeout_s: float
    ) -> None:
        self.slots = slots
        self.batch_max = batch_max
        self._run = run  # one esbuild run for several jobs (Builder's)
        self._count = count
        self.timeout_s = timeout_s
        self._waiting: dict[tuple[str, BuildOptions, str, bool], list[Waiting]] = {}
        self._by_key: dict[str, Waiting] = {}
        self._arrivals = itertools.count()
        # (version, file) seen in a build that failed: such builds run alone for a while.
        self._suspects: TTLCache[tuple[str, str], bool] = TTLCache(MAX_SUSPECTS, SUSPECT_TTL_S)

    @property
    def empty(self) -> bool:
        """Nothing waits, and no build is findable by its key."""
        return not self._waiting and not self._by_key

    def promote(self, key: str, priority: Priority) -> None:
        """A queued build that a more urgent request now waits for moves up the queue."""
        waiting = self._by_key.get(key)
        if waiting is not None and priority < waiting.priority:
            self.move(key, priority)

    def move(self, key: str, priority: Priority) -> None:
        """A queued build moves to ``priority``, up or down (a page it was urgent for
        has another answer now)."""
        waiting = self._by_key.get(key)
        if waiting is not None:
            waiting.priority = priority
            self.slots.move(waiting.ticket, priority)

    def queued_jobs(self, version: str) -> list[tuple[BuildJob, Priority]]:
        """Tailored builds of ``version`` waiting for a slot, with their priority now."""
        return [
            (w.job, w.priority)
            for (queued_version, *_), queue in self._waiting.items()
            if queued_version == version
            for w in queue
            if not w.ticket.done()
        ]

    def suspect(self, job: BuildJob) -> bool:
        """It names a file seen in a failed build lately: it runs alone."""
        return any((job.version, path) in self._suspects for _, path in job.registrations)

    def remember_failure(self, job: BuildJob) -> None:
        for _, path in job.registrations:
            self._suspects[(job.version, path)] = True

    async def run(self, job: BuildJob, source_root: Path) -> BuildOutput:
        """Queued for a slot; built alone or in the batch of the first to get one."""
        loop = asyncio.get_running_loop()
        me = Waiting(
            job,
            source_root,
            self.slots.enqueue(job.priority),
            loop.create_future(),
            job.priority,
            next(self._arrivals),
        )
        self._waiting.setdefault(me.group, []).append(me)
        self._by_key.setdefault(job.key, me)
        try:
            granted = await me.ticket
        except asyncio.CancelledError:
            self._forget(me)
            self.slots.abandon(me.ticket)
            raise
        if not granted:
            return await me.outcome  # another's batch took it along (and forgot it)
        self._forget(me)
        try:
            await self._run_batch([me, *self._take_along(me)])
        finally:
            self.slots.release()
        return me.outcome.result()

    def _forget(self, waiting: Waiting) -> None:
        queue = self._waiting.get(waiting.group)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(waiting)
            if not queue:
                del self._waiting[waiting.group]
        if self._by_key.get(waiting.job.key) is waiting:
            del self._by_key[waiting.job.key]

    def _take_along(self, leader: Waiting) -> list[Waiting]:
        """Up to batch_max - 1 queued builds that can share the leader's run, most urgent first."""
        queue = sorted(self._waiting.get(leader.group, ()), key=lambda w: (w.priority, w.order))
        taken: list[Waiting] = []
        for waiting in queue:
            if len(taken) + 1 >= self.batch_max:
                break
            if self.slots.claim(waiting.ticket):
                taken.append(waiting)
        for waiting in taken:
            self._forget(waiting)
        return taken

    async def _run_batch(self, batch: list[Waiting]) -> None:
        """One esbuild run for every build of ``batch``; each outcome is settled."""
        jobs = [w.job for w in batch]
        root = batch[0].root
        started = time.perf_counter()
        try:
            outputs = await self._run(jobs, root)
        except DiskFault as exc:
            for waiting in batch:
                self._count(waiting.job, time.perf_counter() - started, exc)
                settle(waiting.outcome, exc)
            return
        except (BuildFailed, UnknownModule, BuildCrashed, BuildTimeout) as exc:
            if isinstance(exc, BuildTimeout) and len(batch) > 1:
                logger.warning(
                    "batch build timed out; its builds run alone",
                    extra={"builds": len(batch), "timeout_s": self.timeout_s},
                )
            for waiting in batch:
                if len(batch) == 1:
                    self._count(waiting.job, time.perf_counter() - started, exc)
                    if not isinstance(exc, (BuildCrashed, BuildTimeout)):
                        self.remember_failure(waiting.job)
                settle(waiting.outcome, exc if len(batch) == 1 else RunAlone())
            return
        except BaseException as exc:
            for waiting in batch:
                self._count(waiting.job, time.perf_counter() - started, exc)
                if not waiting.outcome.done():
                    waiting.outcome.cancel()
            raise
        for waiting, output in zip(batch, outputs, strict=True):
            self._count(waiting.job, time.perf_counter() - started, output)
            settle(waiting.outcome, output)
