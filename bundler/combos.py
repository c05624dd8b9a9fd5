"""Which module lists pages ask for most: a bounded frequent-items sketch.

Apache DataSketches' frequent-items sketch (the space-saving family) keeps at
most ``top_k`` counters however many distinct lists arrive, with a known error
bound. The warm-up reads it (GET /combos) to build the next release's popular
bundles before the release's traffic arrives. Lists are versionless: the
question is what pages combine, whatever the version.

Each client counts once per combination per SEEN_WINDOW_S (``first_ask``): one client
asking a combination thousands of times, or thousands of combinations once each, ranks
it below a combination many clients ask for, so no client chooses what the next
release warms or what the fallback holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from pathlib import Path
from typing import Any

import datasketches

from bundler.fallback.ranking import module_popularity
from bundler.fsutil import atomic_write

logger = logging.getLogger(__name__)

COMBOS_FILE = "combos.sketch"  # in the data dir
# (client, combination) pairs already counted are remembered this long, in two
# generations of at most SEEN_MAX each (about 60 bytes a pair); a generation that fills
# early ends early, so a flood of distinct pairs costs memory, never correctness.
SEEN_WINDOW_S = 3600.0
SEEN_MAX = 200_000


class PopularCombos:
    def __init__(self, path: Path, top_k: int) -> None:
        self.path = path
        # The sketch's map holds 0.75 * 2**lg_max_k counters.
        self._lg_max_k = max(3, math.ceil(math.log2(top_k / 0.75)))
        self._sketch = datasketches.frequent_strings_sketch(self._lg_max_k)
        self._seen: set[int] = set()
        self._seen_before: set[int] = set()
        self._seen_since = time.monotonic()

    def first_ask(self, client: str | None, modules: tuple[str, ...]) -> bool:
        """Whether ``client``'s ask for ``modules`` counts: its first in the window (an
        unknown client, None, always counts: warm-ups, tests)."""
        if client is None:
            return True
        now = time.monotonic()
        if now - self._seen_since >= SEEN_WINDOW_S / 2 or len(self._seen) >= SEEN_MAX:
            self._seen_before, self._seen, self._seen_since = self._seen, set(), now
        pair = hash((client, modules))
        if pair in self._seen or pair in self._seen_before:
            return False
        self._seen.add(pair)
        return True

    def record(self, modules: tuple[str, ...]) -> None:
        self._sketch.update(",".join(modules))

    def top(self, n: int) -> list[dict[str, Any]]:
        items = self._sketch.get_frequent_items(
            datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES
        )
        # (item, estimate, lower bound, upper bound). Ranked by the count each is sure to
        # have: an item that entered a full sketch inherits the counter it evicted, so
        # under a flood of distinct lists every newcomer's estimate is high and its lower
        # bound about 1 (bench_flood: ranked by the estimate, the top 20 were all the
        # flood's).
        ranked = sorted(items, key=lambda item: (-item[2], -item[1], item[0]))[:n]
        return [{"modules": item[0].split(","), "count": int(item[2])} for item in ranked]

    def popular_modules(self) -> list[str]:
        """Every module of the tracked combinations, most requested first."""
        return module_popularity(self.top(max(1, self._sketch.num_active_items)))

    def load(self) -> None:
        try:
            data = self.path.read_bytes()
            self._sketch = datasketches.frequent_strings_sketch.deserialize(data)
        except FileNotFoundError:
            return
        except (RuntimeError, ValueError) as exc:  # a torn or foreign file: start afresh
            logger.warning("ignoring unreadable combos file", extra={"problem": str(exc)})

    def snapshot(self) -> bytes:
        """Serialized on the loop: the sketch is not safe to read from another thread."""
        return bytes(self._sketch.serialize())

    def save(self, data: bytes) -> None:
        atomic_write(self.path, data)

    async def save_every(self, interval_s: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.save, self.snapshot())
            except OSError as exc:  # a full or read-only data dir: keep counting in memory
                if not failing:
                    logger.error("could not save the popularity sketch", extra={"error": str(exc)})
                failing = True
            else:
                failing = False
