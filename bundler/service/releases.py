"""A new version's arrival: its most requested bundles are carried over from the version
pages use now (bundler.carry) before they are asked for. That starts at the version's
first request, or, with --prefetch-new-versions, as soon as the source lists it: the
version is pulled then, and a release's first pages find their bundles carried."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from bundler.errors import BundlerError, one_line
from bundler.fleet.lease import Lease
from bundler.sources import version_sort_key
from bundler.spec import BundleSpec

if TYPE_CHECKING:
    from bundler.service.core import BundleService

logger = logging.getLogger(__name__)


class Releases:
    def __init__(self, service: BundleService) -> None:
        self.service = service
        self.prefetched: list[str] = []
        self._watcher: asyncio.Task[None] | None = None

    def arrived(self, version: str, content: str) -> None:
        """The version is here (its first request, or a prefetch): its popular bundles are
        carried over, once, behind the requests."""
        service = self.service
        if service.carrier.swept(version):
            return
        top = service.combos.top(service.settings.carry_sweep_top)
        popular = [tuple(c["modules"]) for c in top]
        fill = functools.partial(self._carry_ahead, version, content)
        service.carrier.sweep(version, service.options, popular, fill)

    async def _carry_ahead(self, version: str, content: str, modules: tuple[str, ...]) -> None:
        service = self.service
        spec = BundleSpec(version, modules, service.options, content)
        tiers = service.tiers
        if spec.key in service.flight or tiers.memory.peek(spec.key) or spec.key in tiers.disk:
            return
        carried = await service.carrier.carry(spec)
        if carried is not None and tiers.memory.peek(spec.key) is None:
            service.carrier.built(spec, carried)
            tiers.keep(carried, Lease.alone(spec.key))  # to the fleet too

    def start(self) -> None:
        if self.service.settings.prefetch_new_versions == "on":
            self._watcher = asyncio.create_task(self._watch(), name="prefetch-new-versions")

    async def _watch(self) -> None:
        """Every --prefetch-interval-s: the newest listed version, if newer than the
        default and not pulled yet, is pulled and carried over to."""
        service = self.service
        while True:
            try:
                listed = await service.source.versions()
                newest = max(listed, key=version_sort_key, default=None)
                default = version_sort_key(service.default_version)
                if (
                    newest is not None
                    and version_sort_key(newest) > default
                    and newest not in self.prefetched
                ):
                    content = await service.source.digest(newest)  # pulled if need be
                    self.prefetched.append(newest)
                    logger.info("new version prefetched", extra={"version": newest})
                    self.arrived(newest, content)
            except BundlerError as exc:  # the source may be down: the next round retries
                logger.warning("prefetch failed", extra={"error": one_line(exc.message)})
            except Exception as exc:  # never the end of the watch: logged, tried again
                logger.exception("prefetch failed", extra={"error": repr(exc)[:300]})
            await asyncio.sleep(service.settings.prefetch_interval_s)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
