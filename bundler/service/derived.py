"""Forms of a built bundle made on demand and kept in small LRUs: its JavaScript without
its CSS (css=link), its CSS as a stylesheet (/bundle.css), its gzip form, source maps
as served documents (an ETag and a brotli form each), and a version's fallback as an ES
module (/bundle.mjs while the tailored module is cold).

gzip is made on the first request that asks for it, once however many ask together:
browsers ask for brotli, which every bundle carries, and gzip at level 9 costs more CPU
than brotli 5, taken from esbuild during a storm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from cachetools import LRUCache

from bundler import css
from bundler.bundle import Bundle, gzip_body
from bundler.entry import module_exports
from bundler.fallback.model import Fallback
from bundler.flight import SingleFlight
from bundler.spec import BuildOptions

# Bundles' CSS-less JavaScript and stylesheets (css=link, /bundle.css), at most.
VARIANTS_MAX_BYTES = 8 * 1024 * 1024
# gzip forms, made on the first request that asks for one.
GZIPPED_MAX_BYTES = 16 * 1024 * 1024
# Source maps as served, by name.
DOCUMENTS_MAX_BYTES = 32 * 1024 * 1024
# Fallbacks as modules: one per version pages ask for at once, a megabyte or more each.
MODULE_FALLBACKS = 4
MAP_COMMENT = b"\n//# sourceMappingURL="


def module_fallback(fallback: Fallback, options: BuildOptions) -> Bundle:
    """The version's fallback as an ES module exporting every name it holds, as the
    tailored module does (each name its namespace, the default all of them, and
    ``"bundler:bundle"``), so one import statement works with either. It is the classic
    fallback with exports added after its code: that code registers every name in the
    registry, and the exports read them back. Building a second fallback per version
    would cost a survey and a build in a release's first seconds, for the same modules.
    So this form, unlike the tailored module, also registers its modules globally."""
    code = css.for_module(fallback.bundle.code)
    names = sorted(fallback.names)
    lines = [f"const __bundlerRegistry = globalThis[{json.dumps(options.registry_name)}];"]
    lines += [
        f"const __bundlerM{i} = __bundlerRegistry[{json.dumps(n)}];" for i, n in enumerate(names)
    ]
    info = {"version": fallback.version, "mode": "fallback", "modules": len(names)}
    exported = [(n, f"__bundlerM{i}") for i, n in enumerate(names)]
    lines += module_exports(exported, json.dumps(info), "__bundlerInfo")
    exports = "\n".join(lines).encode()
    # Before the source map comment (kept last); the lines it maps do not move.
    at = code.rfind(MAP_COMMENT)
    at = len(code.rstrip()) if at < 0 else at
    code = code[:at].rstrip() + b"\n" + exports + code[at:]
    return Bundle.create(
        f"{fallback.bundle.key}:module", code, etag_prefix=fallback.bundle.etag_prefix + "m"
    )


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
        self._module_fallbacks: LRUCache[tuple[str, str], Bundle] = LRUCache(
            maxsize=MODULE_FALLBACKS
        )
        self._making_modules: SingleFlight[tuple[str, str], Bundle] = SingleFlight("module")

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

    async def module_fallback(self, fallback: Fallback, options: BuildOptions) -> Bundle:
        """``fallback`` as an ES module (module_fallback): made once, in a thread, however
        many module pages ask for it together."""
        key = (fallback.version, fallback.bundle.digest)
        made = self._module_fallbacks.get(key)
        if made is None:

            async def make() -> Bundle:
                module = await asyncio.to_thread(module_fallback, fallback, options)
                self._module_fallbacks[key] = module
                return module

            made = await self._making_modules.do(key, make)
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
