"""A cache entry is only ever served for exactly the source it was built from.

A version name is the page's; the bytes behind it are the source's. Two sources can
both have a 1.1.0 (a user's own components served after the bundled examples, on the
same data dir), so every key holds the version's content digest. The naive control
keys as before (version, modules, options) and serves the other source's bundle.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bundler.app import create_app
from bundler.settings import Settings
from bundler.sources import DirectorySource
from tests.conftest import EXAMPLES, wait_ready

QUERY = "/bundle.js?modules=components/card,components/hero&v=1.1.0"


def two_sources(tmp_path: Path) -> tuple[Path, Path]:
    """A: the examples' 1.1.0. B: another 1.1.0, the same module names, other code."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(EXAMPLES / "1.1.0", a / "1.1.0")
    (b / "1.1.0" / "components").mkdir(parents=True)
    for name in ("card", "hero"):
        (b / "1.1.0" / "components" / f"{name}.js").write_text(
            f'export const made_by = "{name} of source B";\n'
        )
    return a, b


def keyed_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The naive control: no content in the key, as before this fix."""

    async def no_digest(self: DirectorySource, version: str) -> str:
        return ""

    monkeypatch.setattr(DirectorySource, "digest", no_digest)
    monkeypatch.setattr(DirectorySource, "known_digest", lambda self, version: "")


@pytest.mark.parametrize("keys", ["content", "naive"])
async def test_another_source_on_the_same_data_dir_never_gets_the_first_ones_bundle(
    aiohttp_client: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    keys: str,
) -> None:
    if keys == "naive":
        keyed_as_before(monkeypatch)
    a, b = two_sources(tmp_path)
    first = await aiohttp_client(create_app(make_settings(source=str(a))))
    await wait_ready(first)
    resp = await first.get(QUERY)
    assert resp.status == 200 and b"source B" not in await resp.read()
    assert (await first.get(QUERY.replace("card", "nav"))).status == 200
    await first.close()  # its disk writes finish: the next one finds them on disk

    second = await aiohttp_client(create_app(make_settings(source=str(b))))
    await wait_ready(second)
    resp = await second.get(QUERY)
    body = await resp.read()
    nav = await second.get(QUERY.replace("card", "nav"))
    if keys == "naive":  # the examples' bundle, for a source without their code
        assert resp.status == 200 and b"source B" not in body
        assert nav.status == 200
        return
    assert resp.status == 200, body
    assert body.count(b"of source B") == 2
    assert nav.status == 404  # B has no nav: B's 404, not A's bundle
    assert "components/nav" in await nav.text()


async def test_the_data_dir_inside_a_source_is_not_a_version(tmp_path: Path) -> None:
    """`--source .` run from the source itself: its data/ is not a version. Naive: it is."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    (source / "data" / "cache").mkdir(parents=True)
    assert await DirectorySource(source).versions() == ["1.1.0", "data"]  # naive
    own = DirectorySource(source, not_versions=(source / "data",))
    assert await own.versions() == ["1.1.0"]
    assert own.newest_version() == "1.1.0"
