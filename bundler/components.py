"""The service's parts made from its settings, once, in one place: the app (create_app),
the offline warm-up (bundler warm --data-dir) and build-fallback all build with the same
source, builder options, cache tiers and fallback store, so what one makes the others
find. Only the app joins a fleet (Redis): the offline commands are a fleet of one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bundler.build.builder import Builder
from bundler.combos import COMBOS_FILE, PopularCombos
from bundler.fallback.ranking import OperatorList
from bundler.fallback.store import FallbackStore
from bundler.fleet.single import NoFleet
from bundler.settings import Settings
from bundler.source_config import open_source
from bundler.sources import SourceStore
from bundler.spec import CLASSIC, MODULE, BuildOptions
from bundler.tiers.disk import DiskTier
from bundler.tiers.memory import MemoryTier
from bundler.tiers.tiered import TieredCache

if TYPE_CHECKING:
    from bundler.fleet import Fleet


@dataclass(frozen=True)
class Components:
    settings: Settings
    data_dir: Path
    source: SourceStore
    builder: Builder
    options: BuildOptions
    fleet: Fleet
    tiers: TieredCache
    combos: PopularCombos
    fallbacks: FallbackStore


def build_options(settings: Settings, module: bool = False) -> BuildOptions:
    """What every bundle is built with (part of every cache key); ``module``: the module
    form's (/bundle.mjs)."""
    return BuildOptions(
        target=settings.esm_target if module else settings.esbuild_target,
        registry_name=settings.registry_name,
        asset_inline_max_bytes=settings.asset_inline_max_bytes,
        format=MODULE if module else CLASSIC,
    )


def make_fleet(settings: Settings, lag: Callable[[], float]) -> Fleet:
    """The Redis fleet where one is configured, else a fleet of one."""
    if not settings.redis_url:
        return NoFleet()
    from bundler.fleet.client import RedisFleet  # redis-py: 7 MiB of RSS, only if used

    return RedisFleet(
        settings.redis_url,
        timeout_s=settings.redis_timeout_ms / 1000,
        ttl_s=settings.redis_ttl_s,
        prefix=settings.redis_key_prefix,
        lag=lag,
    )


def make_components(
    settings: Settings,
    *,
    builder: Builder | None = None,
    max_versions: int | None = None,
    fleet: Fleet | None = None,
) -> Components:
    """Raises ConfigError (one line) when a setting cannot work. ``builder``: another
    pool shape (the offline commands); ``max_versions``: fallbacks kept in memory;
    ``fleet``: the app's (make_fleet), none for the offline commands."""
    fleet = fleet or NoFleet()
    data_dir = Path(settings.data_dir).resolve()
    source = open_source(settings)
    builder = builder or Builder.from_settings(settings)
    options = build_options(settings)
    combos = PopularCombos(data_dir / COMBOS_FILE, settings.combos_top_k)
    fallbacks = FallbackStore(
        settings.static_fallback_dir,
        data_dir,
        builder,
        source,
        options,
        max_versions=max_versions or settings.source_keep_versions + 1,
        max_bytes=settings.fallback_max_bytes,
        operator=OperatorList.load(settings.fallback_modules),
        popular=combos.popular_modules,
        fleet=fleet,
    )
    disk = DiskTier(
        data_dir / "cache", settings.disk_cache_max_bytes, settings.disk_cache_min_free_bytes
    )
    tiers = TieredCache(MemoryTier(settings.memory_cache_max_bytes), disk, fleet)
    return Components(settings, data_dir, source, builder, options, fleet, tiers, combos, fallbacks)
