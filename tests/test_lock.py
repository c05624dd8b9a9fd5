"""The environment the tests run in is exactly the lock's: what `make setup` installed
from requirements-dev.txt, no package more, none less, none at another version."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-dev.txt"
# The installer that ran the install, and the project itself (installed editable, no pin).
NOT_LOCKED = {"pip", "bundler"}
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(text: str) -> dict[str, str]:
    """The pins that apply to this interpreter and platform (their markers evaluated)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match is None:
            continue
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate():
            pins[canonicalize_name(name)] = version
    return pins


def installed() -> dict[str, str]:
    return {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions()
        if canonicalize_name(dist.metadata["Name"]) not in NOT_LOCKED
    }


def test_the_lock_parses_to_every_pin() -> None:
    pins = locked(LOCK.read_text())
    # Every "name==version" line of the lock is a pin (markers that do not apply aside).
    assert len(pins) >= 40
    assert pins["aiohttp"].count(".") == 2


def test_installed_packages_are_exactly_the_lock() -> None:
    pins, have = locked(LOCK.read_text()), installed()
    assert {n: have.get(n) for n in pins if have.get(n) != pins[n]} == {}, "installed otherwise"
    assert sorted(set(have) - set(pins)) == [], "installed but not in the lock"


def test_a_package_off_the_lock_is_seen() -> None:
    """The check can fail: a lock that pins one package otherwise, or lacks one, differs."""
    text = LOCK.read_text()
    moved = re.sub(r"^aiohttp==\S+", "aiohttp==0.0.1", text, flags=re.M)
    assert locked(moved)["aiohttp"] != installed()["aiohttp"]
    dropped = re.sub(r"^yarl==.*$", "", text, flags=re.M)
    assert "yarl" in set(installed()) - set(locked(dropped))
