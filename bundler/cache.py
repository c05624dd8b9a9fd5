"""The memory tier of built bundles: an LRU bounded in bytes (cachetools)."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

from cachetools import LRUCache

# Level 9 costs little more than 6 on bundles this size, and it is paid once per bundle.
GZIP_LEVEL = 9


@dataclass(frozen=True)
class Bundle:
    """One built bundle with its precomputed representations."""

    key: str
    code: bytes
    gzip: bytes
    digest: str
    etag_prefix: str = ""

    @property
    def size(self) -> int:
        return len(self.code) + len(self.gzip)

    def etag(self, encoding: str) -> str:
        # Each content-coding is its own representation, so each has its own strong ETag.
        suffix = "" if encoding == "identity" else f"-{encoding}"
        return f'"{self.etag_prefix}{self.digest[:32]}{suffix}"'

    @classmethod
    def create(cls, key: str, code: bytes, etag_prefix: str = "") -> Bundle:
        """CPU work (hashing, compressing): call it off the event loop."""
        return cls(
            key=key,
            code=code,
            gzip=gzip.compress(code, compresslevel=GZIP_LEVEL, mtime=0),
            digest=hashlib.sha256(code).hexdigest(),
            etag_prefix=etag_prefix,
        )


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        self._lru: LRUCache[str, Bundle] = LRUCache(maxsize=max_bytes, getsizeof=_size)

    def get(self, key: str) -> Bundle | None:
        return self._lru.get(key)

    def put(self, bundle: Bundle) -> None:
        if bundle.size <= self._lru.maxsize:
            self._lru[bundle.key] = bundle

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)


def _size(bundle: Bundle) -> int:
    return bundle.size
