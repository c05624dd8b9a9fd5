"""The module form (/bundle.mjs) against the classic one (/bundle.js), and against esbuild
by hand with --format=esm: cold and warm, side by side in one run (a part of `make bench`,
``--parts esm``).

Each run starts a fresh server per form, builds the same warm-up bundles first (a process
that has been at work), then the measured bundle cold and 10 hits; esbuild by hand runs
between servers, so every column sees the same moments of a shared machine. Done for the
5-module example bundle and for a page's 8 lodash-es functions (its npm tarball).
"""

from __future__ import annotations

import statistics
import tarfile
import tempfile
from pathlib import Path

from bench_core import (
    COMPONENTS,
    FIVE,
    LIB,
    LODASH_OTHERS,
    LODASH_PAGE,
    VERSION,
    cold_and_warm,
    esbuild_by_hand,
    free_port,
    ms,
    warm_ups,
)


def part_esm(runs: int) -> None:
    from bench_storm import CACHE, CORPORA, artifact_server, ensure_corpus, source_flags

    example_before = warm_ups(COMPONENTS + LIB, FIVE)
    columns = measure(FIVE, runs, example_before, (), VERSION, None)
    table(f"Module form, 5-module example bundle, v={VERSION}", columns)
    corpus = CORPORA["lodash-es"]
    ensure_corpus(corpus)
    with artifact_server(free_port()) as artifact_url, tempfile.TemporaryDirectory() as unpacked:
        with tarfile.open(CACHE / f"{corpus.package}-{corpus.release}.tgz") as tar:
            tar.extractall(unpacked, filter="data")
        flags = (*source_flags(corpus, artifact_url), "--default-version", corpus.release)
        before = warm_ups(LODASH_OTHERS, LODASH_PAGE)
        root = Path(unpacked) / "package"
        columns = measure(LODASH_PAGE, runs, before, flags, corpus.release, root)
    table(f"Module form, a page's 8 lodash-es functions, v={corpus.release}", columns)


def measure(
    combo: tuple[str, ...],
    runs: int,
    before: list[tuple[str, ...]],
    flags: tuple[str, ...],
    version: str,
    root: Path | None,
) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {k: [] for k in ("hand iife", "hand esm", "cold iife", "cold esm", "warm iife", "warm esm")}  # fmt: skip
    for _ in range(runs):
        for module, form in ((False, "iife"), (True, "esm")):

            def by_hand(module: bool = module, form: str = form) -> None:
                got[f"hand {form}"].extend(
                    esbuild_by_hand(3, 1, combo, root, version, module=module)
                )

            cold, warm = cold_and_warm(combo, 1, before, flags, version, by_hand, module)
            got[f"cold {form}"] += cold
            got[f"warm {form}"] += warm
    return got


def table(title: str, got: dict[str, list[float]]) -> None:
    median = {k: statistics.median(v) for k, v in got.items()}
    print(f"\n{title}")
    print(f"{'':34}{'iife ms':>10}{'esm ms':>10}{'esm / iife':>12}")
    for label, key in (
        ("esbuild by hand, 1 CPU (median)", "hand"),
        ("service, cold (median)", "cold"),
        ("service, warm hit (median)", "warm"),
    ):
        iife, esm = median[f"{key} iife"], median[f"{key} esm"]
        print(f"{label:34}{ms(iife):>10}{ms(esm):>10}{esm / iife:>11.2f}x")
    for form in ("iife", "esm"):
        print(
            f"service cold / by hand, {form}: {median[f'cold {form}'] / median[f'hand {form}']:.2f}x"
        )
    print(f"runs: {len(got['cold iife'])} cold and {len(got['warm iife'])} warm per form")
