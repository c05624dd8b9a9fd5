"""Components' CSS and the files it points at travel inside the bundle.

A component that does ``import "./hero.css"`` gets its rules from the one script tag
a page already has: esbuild writes the CSS of every module a bundle includes, in
import order, next to the bundle (``bundle.css``); the service appends to the
JavaScript a few lines that add it to the page when the bundle runs. The CSS is
cut into one piece per source file (esbuild's metafile gives each file's bytes in
the output, in output order), and each piece is added once per page, keyed by a
hash of its text: two bundles on one page that share a module's CSS add it once.
A bundle whose modules import no CSS is not touched.

Files the CSS (or JavaScript) refers to, on an allow-list of image and font types,
are inlined as data: URLs, so they work wherever the bundle is served from (a CDN,
a path prefix) with no second request. Any other type is refused by esbuild
("No loader is configured"), which the request gets as a 422; a file outside the
version is refused like a JavaScript import of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

# Files a component's CSS or JavaScript may point at, inlined as data: URLs.
ASSET_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".avif",
    ".svg",
    ".woff",
    ".woff2",
    ".ttf",
    ".otf",
)
CSS_NAME = "bundle.css"
KEY_CHARS = 16
# Runs in the page: adds each piece once (a registry on the document), in order.
INJECTOR = (
    '(function(c){{if(typeof document==="undefined")return;'
    'var k=Symbol.for("bundler.css"),d=document[k]||(document[k]=Object.create(null));'
    "for(var i=0;i<c.length;i+=2){{if(d[c[i]])continue;d[c[i]]=1;"
    'var s=document.createElement("style");s.setAttribute("data-bundler-css",c[i]);'
    "s.textContent=c[i+1];document.head.appendChild(s)}}}})({pieces});"
)


def split_injected(code: bytes) -> tuple[bytes, bytes] | None:
    """A bundle's JavaScript without its CSS injector, and its CSS as one stylesheet (the
    pieces in order); None when the bundle has no CSS. The CSS is kept once, inside the
    bundle: ``/bundle.css`` and ``css=link`` are derived from it."""
    start = code.rfind(b"\n" + INJECTOR_HEAD)
    if start < 0:
        return None
    line_end = code.find(b"\n", start + 1)
    line_end = len(code) if line_end < 0 else line_end
    line = code[start + 1 : line_end]
    try:
        flat = json.loads(line[line.rindex(b"})(") + 3 : line.rindex(b");")])
    except ValueError:
        return None
    texts = [str(t) for t in flat[1::2]]
    return code[:start] + code[line_end:], "\n".join(texts).encode() + b"\n"


# The injector's first words: how a bundle's CSS line is found again.
INJECTOR_HEAD = INJECTOR.split(",d=", 1)[0].replace("{{", "{").encode()


def loader_flags() -> list[str]:
    return [f"--loader:{ext}=dataurl" for ext in ASSET_EXTENSIONS]


def pieces(css: bytes, inputs: Sequence[tuple[str, int]]) -> list[bytes]:
    """The CSS cut into one piece per source file, from the metafile's ``inputs`` of the
    CSS output ((path, bytesInOutput), in output order). If the sizes do not account
    for the text (another esbuild's layout), the whole CSS is one piece."""
    body = _without_map_comment(css)
    cuts: list[bytes] = []
    at = 0
    for _, size in inputs:
        if size:
            cuts.append(body[at : at + size])
            at += size
    if not cuts or body[at:].strip():
        return [body.strip()] if body.strip() else []
    return [c for c in cuts if c.strip()]


def injector(css_pieces: Sequence[bytes]) -> bytes:
    """The JavaScript that adds the pieces to the page, each once, keyed by its hash."""
    flat: list[str] = []
    for piece in css_pieces:
        text = piece.decode()
        flat += [hashlib.sha256(piece).hexdigest()[:KEY_CHARS], text]
    return INJECTOR.format(pieces=json.dumps(flat)).encode()


def css_inputs(output: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(path, bytesInOutput) of a metafile output, in its order."""
    return [(path, int(info.get("bytesInOutput", 0))) for path, info in output.items()]


def _without_map_comment(css: bytes) -> bytes:
    end = css.rfind(b"/*# sourceMappingURL=")
    return css[:end] if end >= 0 else css
