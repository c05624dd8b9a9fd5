"""Source maps, made on request: a developer with devtools open asks for one; pages never
do. A tailored bundle is built without its map (a third less esbuild work); its map, and
its CSS's map, come from a second run whose code is byte-for-byte the same, kept in memory
and shared with the fleet under the digest of the code they map."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cachetools import LRUCache

from bundler.build.builder import Builder
from bundler.bundle import Bundle
from bundler.errors import Unavailable
from bundler.fleet.keys import source_map_name
from bundler.flight import SingleFlight
from bundler.service.building import tailored_output
from bundler.slots import Priority
from bundler.sources import SourceStore
from bundler.spec import BundleSpec
from bundler.tiers.tiered import TieredCache

if TYPE_CHECKING:
    from bundler.fleet import Fleet

logger = logging.getLogger(__name__)

# Source maps built on request, kept in memory.
MAP_CACHE_BYTES = 32 * 1024 * 1024
# The LRU holds a bundle's CSS map under its key with this suffix.
CSS_MAP_SUFFIX = ":css"


class SourceMaps:
    def __init__(
        self,
        source: SourceStore,
        builder: Builder,
        fleet: Fleet,
        tiers: TieredCache,
    ) -> None:
        self.source = source
        self.builder = builder
        self.fleet = fleet
        self.tiers = tiers
        self._maps: LRUCache[str, bytes] = LRUCache(maxsize=MAP_CACHE_BYTES, getsizeof=len)
        self.flight: SingleFlight[str, bytes] = SingleFlight("source-map")

    def clear(self) -> None:
        """Forget every map kept here (as a replica that never made one)."""
        self._maps.clear()

    async def get(self, spec: BundleSpec, bundle: Bundle, *, of_css: bool) -> bytes:
        """The map of ``bundle`` (built from ``spec``), or of its CSS."""
        key = spec.key + (CSS_MAP_SUFFIX if of_css else "")
        cached = self._maps.get(key)
        if cached is not None:
            return cached
        return await self.flight.do(key, lambda: self._shared_or_built(spec, bundle, key, of_css))

    async def _shared_or_built(
        self, spec: BundleSpec, bundle: Bundle, key: str, of_css: bool
    ) -> bytes:
        """The map another replica made, else made here (and then shared)."""
        found = await self.fleet.get_sealed(source_map_name(key, bundle.digest))
        if found is not None:
            self._keep(key, found)
            return found
        return await self._build(spec, bundle, of_css=of_css)

    def _keep(self, key: str, made: bytes) -> None:
        if len(made) <= MAP_CACHE_BYTES // 4:
            self._maps[key] = made

    async def _build(self, spec: BundleSpec, bundle: Bundle, *, of_css: bool) -> bytes:
        output = await tailored_output(
            self.source, self.builder, spec, Priority.TAILORED, with_map=True
        )
        assert output.sourcemap is not None
        if output.code != bundle.code:
            logger.warning(
                "source map made for other code than the cached bundle (source changed?)",
                extra={"key": spec.key, "bundle": spec.query},
            )
        for key, made in (
            (spec.key, output.sourcemap),
            (spec.key + CSS_MAP_SUFFIX, output.css_map),
        ):
            if made is None:
                continue
            self._keep(key, made)
            if self.fleet.shares and output.code == bundle.code:
                name = source_map_name(key, bundle.digest)
                self.tiers.in_background(self.fleet.put_sealed(name, made), f"shared-write:{name}")
        if of_css:
            if output.css_map is None:
                raise Unavailable("the CSS source map could not be made; retry")
            return output.css_map
        return output.sourcemap
