"""A built bundle, the value every cache tier stores.

A Bundle carries its code and its brotli form (what browsers ask for), computed
once when it is built (or read back from the disk tier), never per request. The
gzip form is made on the first request that needs it and kept apart (see
service/derived.py): gzip at level 9 costs more CPU than brotli 5, and a release
storm's builds compete with esbuild for the CPUs.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass

import brotli

# Compression runs once per bundle, in a thread (both compressors release the GIL),
# but during a release storm it competes with esbuild for the CPUs: brotli 11 takes
# about as long as esbuild took to build the bundle, for a few per cent fewer bytes.
# Tailored bundles use 5; a version's fallback, built once and served often, uses 11.
GZIP_LEVEL = 9
BROTLI_QUALITY = 5
BROTLI_QUALITY_MAX = 11
ENCODINGS = ("br", "gzip", "identity")


@dataclass(frozen=True)
class Bundle:
    """One built bundle with its precomputed representations (gzip: gzip_body)."""

    key: str
    code: bytes
    br: bytes
    digest: str
    sourcemap: bytes | None = None
    etag_prefix: str = ""
    br_quality: int = BROTLI_QUALITY
    # Where a tailored bundle's code names its version (bundler.build.marks), and what it
    # was built from (bundler.carry.record; b"": nothing, it is never carried).
    version_at: tuple[tuple[int, int], ...] = ()
    inputs: bytes = b""

    @property
    def size(self) -> int:
        return len(self.code) + len(self.br) + len(self.sourcemap or b"") + len(self.inputs)

    def body(self, encoding: str) -> bytes:
        """The bytes for ``br`` or ``identity``; gzip is made apart (gzip_body)."""
        if encoding == "gzip":
            raise ValueError("a bundle's gzip form is made on demand: gzip_body(bundle.code)")
        return self.br if encoding == "br" else self.code

    def etag(self, encoding: str) -> str:
        # Each content-coding is its own representation, so each has its own strong ETag.
        # A fallback is served at once with quick brotli, then recompressed at 11: other bytes.
        suffix = "" if encoding == "identity" else f"-{encoding}"
        if encoding == "br" and self.br_quality != BROTLI_QUALITY:
            suffix += str(self.br_quality)
        return f'"{self.etag_prefix}{self.digest[:32]}{suffix}"'

    @classmethod
    def create(
        cls,
        key: str,
        code: bytes,
        sourcemap: bytes | None = None,
        etag_prefix: str = "",
        brotli_quality: int = BROTLI_QUALITY,
        version_at: tuple[tuple[int, int], ...] = (),
        inputs: bytes = b"",
    ) -> Bundle:
        """CPU work (hashing, compressing): call it off the event loop."""
        return cls(
            key=key,
            code=code,
            br=brotli.compress(code, quality=brotli_quality),
            digest=hashlib.sha256(code).hexdigest(),
            sourcemap=sourcemap,
            etag_prefix=etag_prefix,
            br_quality=brotli_quality,
            version_at=version_at,
            inputs=inputs,
        )


def gzip_body(code: bytes) -> bytes:
    """The gzip form (CPU work: off the event loop); the same bytes every time."""
    return gzip.compress(code, compresslevel=GZIP_LEVEL, mtime=0)
