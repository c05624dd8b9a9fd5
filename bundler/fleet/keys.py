"""Every key the service uses in Redis, in one place (their values are described in
bundler.fleet.client): a deployment's keys all start with its prefix (--redis-key-prefix)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.landed = f"{prefix}landed"  # the channel a landed bundle's key is published on
        self.combos = f"{prefix}combos"  # the fleet's popularity, a sorted set

    def bundle(self, key: str) -> str:
        return f"{self.prefix}b:{key}"

    def lease(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"

    def named(self, name: str) -> str:
        """A value stored by name (a source map, a fallback)."""
        return f"{self.prefix}{name}"


def source_map_name(key: str, code_digest: str) -> str:
    """A source map's name: it is the map of exactly this code."""
    return f"m:{key}:{code_digest[:32]}"


def fallback_name(identity: dict[str, Any]) -> str:
    """A fallback's name: what it must match (its source, options and plan), hashed."""
    return "fb:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
