"""A request's query made its spec, bound to the content of its version's source.

The spec's key holds the version's digest (bundler.digest), so a version is looked up
only once its source is here (a pull first, for a new one). A warm hit's query is
usually one seen before: its spec, key included (JSON and SHA-256), comes from a small
LRU, checked against the version's digest as known now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from cachetools import LRUCache

from bundler.settings import Settings
from bundler.sources import SourceStore
from bundler.spec import MODULE, BuildOptions, BundleSpec, parse_query

# Parsed queries kept (a spec and its cache key), by the query as sent.
PARSED_QUERIES = 4096


class Queries:
    def __init__(
        self, settings: Settings, source: SourceStore, options: BuildOptions, default_version: str
    ) -> None:
        self.settings = settings
        self.source = source
        self.options = options
        # The module form's (/bundle.mjs): its own target, its own cache entries.
        self.module_options = dataclasses.replace(
            options, format=MODULE, target=settings.esm_target
        )
        self.default_version = default_version
        self._parsed: LRUCache[tuple[Any, ...], tuple[BundleSpec, bool]] = LRUCache(
            maxsize=PARSED_QUERIES
        )

    async def parse(
        self,
        pairs: Sequence[tuple[str, str]],
        other_params: frozenset[str] = frozenset(),
        module: bool = False,
    ) -> tuple[BundleSpec, bool]:
        """The request's spec, bound to its version's content (its digest, taken once per
        version: for a version not pulled yet, after its pull). A warm hit's query is
        usually one seen before: its spec (with its cache key, JSON and SHA-256) comes from
        a small LRU, not made again. ``module``: the module form's spec (/bundle.mjs)."""
        memo_key = (tuple(pairs), self.default_version, module)
        parsed = self._parsed.get(memo_key)
        if parsed is not None and parsed[0].content == self.source.known_digest(parsed[0].version):
            return parsed
        spec, pinned = parse_query(
            pairs,
            default_version=self.default_version,
            options=self.module_options if module else self.options,
            max_modules=self.settings.max_modules,
            max_chars=self.settings.max_module_name_chars,
            other_params=other_params,
        )
        content = await self.source.digest(spec.version)
        parsed = dataclasses.replace(spec, content=content), pinned
        self._parsed[memo_key] = parsed
        return parsed
