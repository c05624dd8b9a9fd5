"""Forms of a built bundle made on demand and kept in small LRUs: its JavaScript without
its CSS (css=link), its CSS as a stylesheet (/bundle.css), its gzip form, and source maps
as served documents (an ETag and a brotli form each).

gzip is made on the first request that asks for it, once however many ask together:
browsers ask for brotli, which every bundle carries, and gzip at level 9 costs more CPU
than brotli 5, taken from esbuild during a storm.
"""

from __future__ import annotations

import asyncio
import contextlib

from cachetools import LRUCache

from bundler import css
from bundler.bundle import Bundle, gzip_body
from bundler.flight import SingleFlight

# Bundles' CSS-less JavaScript and stylesheets (css=link, /bundle.css), at most.
VARIANTS_MAX_BYTES = 8 * 1024 * 1024
# gzip forms, made on the first request that asks for one.
GZIPPED_MAX_BYTES = 16 * 1024 * 1024
# Source maps as served, by name.
DOCUMENTS_MAX_BYTES = 32 * 1024 * 1024


def derive(bundle: Bundle, kind: str, map_url: str | None) -> Bundle:
    split = css.split_injected(bundle.code)
    if split is None:  # no CSS: the JavaScript as it is, and an empty stylesheet
        if kind == "js":
            return bundle
        code = b""
    elif kind == "js":
        code = split[0]
    else:  # it names its moved-out assets relative to itself already
        code = split[1]
        if map_url:
            code += f"/*# sourceMappingURL={map_url} */\n".encode()
    return Bundle.create(f"{bundle.key}:{kind}", code, etag_prefix=bundle.etag_prefix)


class DerivedForms:
    def __init__(self) -> None:
        self._variants: LRUCache[tuple[str, str, str, str | None], Bundle] = LRUCache(
            maxsize=VARIANTS_MAX_BYTES, getsizeof=lambda b: b.size
        )
        self._gzipped: LRUCache[tuple[str, str], bytes] = LRUCache(
            maxsize=GZIPPED_MAX_BYTES, getsizeof=len
        )
        self._gzipping: SingleFlight[tuple[str, str], bytes] = SingleFlight("gzip")
        self._documents: LRUCache[str, Bundle] = LRUCache(
            maxsize=DOCUMENTS_MAX_BYTES, getsizeof=lambda b: b.size
        )

    def gzipping(self, bundle: Bundle) -> bool:
        """Whether ``bundle``'s gzip form is being made now."""
        return (bundle.key, bundle.digest) in self._gzipping

    async def variant(self, bundle: Bundle, kind: str, map_url: str | None = None) -> Bundle:
        """The bundle's JavaScript without its CSS injector (``js``), or its CSS as one
        stylesheet (``css``, empty when it has none; ``map_url`` names its source map):
        derived from the bundle, which keeps its CSS once, on first use, compressed, and
        kept in a small LRU."""
        key = (bundle.key, bundle.digest, kind, map_url)
        made = self._variants.get(key)
        if made is None:
            made = await asyncio.to_thread(derive, bundle, kind, map_url)
            self._variants[key] = made
        return made

    async def document(self, name: str, data: bytes) -> Bundle:
        """``data`` (a source map, megabytes for a large fallback's) as a Bundle: a strong
        ETag and its brotli form, made once in a thread and kept in a small LRU."""
        made = self._documents.get(name)
        if made is None or made.code != data:
            made = await asyncio.to_thread(Bundle.create, name, data)
            with contextlib.suppress(ValueError):  # larger than the whole LRU: not kept
                self._documents[name] = made
        return made

    async def body(self, bundle: Bundle, encoding: str) -> bytes:
        """The bytes of ``bundle`` in ``encoding``; gzip is made once, in a thread, on the
        first request for it, and kept in a small LRU of its own."""
        if encoding != "gzip":
            return bundle.body(encoding)
        key = (bundle.key, bundle.digest)
        made = self._gzipped.get(key)
        if made is None:

            async def make() -> bytes:
                body = await asyncio.to_thread(gzip_body, bundle.code)
                # Kept before the flight ends: a request arriving between the flight's end
                # and its waiters' wake-up finds it here instead of making it again.
                with contextlib.suppress(ValueError):  # larger than the whole LRU: not kept
                    self._gzipped[key] = body
                return body

            made = await self._gzipping.do(key, make)
        return made
