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
are inlined as data: URLs (esbuild's dataurl loader). Any other type is refused by
esbuild ("No loader is configured"), which the request gets as a 422; a file outside
the version is refused like a JavaScript import of one. In the CSS, an image or font
over ``--asset-inline-max-bytes`` is then moved out: stored once under its content
hash (``<data>/assets/<hash>.<ext>``, served at ``/assets/<version>/<hash>.<ext>``,
immutable; a replica that has not stored it finds it in the version by its hash)
and named relative to the bundle, so it works behind a CDN and a path prefix: the
injector puts the bundle's own directory in front of it in the page, ``/bundle.css``
names it relative to itself (``url(assets/...)``). A large file a module imports is moved out the same way:
a string in the code would resolve against the page, so the bundle takes its own
directory when it runs (a line before its code) and the string is built from it; the
bundle's source map is shifted to match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
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
# An asset moved out of the CSS, served under its content hash, by extension.
ASSET_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
}
ASSET_EXTENSION_OF = {mime: ext for ext, mime in ASSET_TYPES.items()}
ASSET_NAME = re.compile(r"[0-9a-f]{32}\.(?:" + "|".join(ASSET_TYPES) + ")")
# esbuild's data: URLs in CSS (binary types are base64; SVG text stays inline).
DATA_URL = re.compile(rb'url\(("?)data:([a-z0-9.+/-]+);base64,([A-Za-z0-9+/=]+)\1\)')
# ... and in JavaScript, where a module imports a file (a string; groups as DATA_URL's).
JS_DATA_URL = re.compile(rb'()"data:([a-z0-9.+/-]+);base64,([A-Za-z0-9+/=]+)"')
# The bundle's directory, taken when it runs, before its code (which names it).
JS_BASE_NAME = "__bundlerAssetBase"
JS_BASE_LINE = (
    f'var {JS_BASE_NAME}=typeof document!="undefined"&&document.currentScript&&'
    'document.currentScript.src?document.currentScript.src.replace(/[?#].*$/,"")'
    '.replace(/[^/]*$/,""):"";'
).encode()
CSS_NAME = "bundle.css"
KEY_CHARS = 16
# Runs in the page: adds each piece once (a registry on the document), in order.
INJECTOR = (
    '(function(c){{if(typeof document==="undefined")return;'
    'var k=Symbol.for("bundler.css"),d=document[k]||(document[k]=Object.create(null)),'
    'p=document.currentScript,b=p&&p.src?p.src.replace(/[?#].*$/,"").replace(/[^/]*$/,""):"";'
    "for(var i=0;i<c.length;i+=2){{if(d[c[i]])continue;d[c[i]]=1;"
    'var s=document.createElement("style");s.setAttribute("data-bundler-css",c[i]);'
    's.textContent=c[i+1].split("url(assets/").join("url("+b+"assets/");'
    "document.head.appendChild(s)}}}})({pieces});"
)


def has_css(code: bytes) -> bool:
    """Whether a bundle carries CSS (a substring search; nothing parsed)."""
    return b"\n" + INJECTOR_HEAD in code


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
    # The pieces are esbuild's output cut in order: joined, they are that output again
    # (which its source map describes).
    texts = [str(t) for t in flat[1::2]]
    return code[:start] + code[line_end:], "".join(texts).encode() + b"\n"


# The injector's first words: how a bundle's CSS line is found again.
INJECTOR_HEAD = INJECTOR.split(",d=", 1)[0].replace("{{", "{").encode()

# A module script has no document.currentScript: the module form (/bundle.mjs) takes its
# own directory from import.meta.url. Each replacement is padded to the length of what it
# replaces, so no offset in the bundle moves (its source map and its version's marks
# stay true).
_SCRIPT_BASE = (
    b'p=document.currentScript,b=p&&p.src?p.src.replace(/[?#].*$/,"").replace(/[^/]*$/,""):""'
)
_MODULE_BASE = b'p=0,b=import.meta.url.replace(/[?#].*$/,"").replace(/[^/]*$/,"")'
_SCRIPT_JS_BASE = JS_BASE_LINE
_MODULE_JS_BASE = (
    f'var {JS_BASE_NAME}=import.meta.url.replace(/[?#].*$/,"").replace(/[^/]*$/,"");'.encode()
)


def for_module(code: bytes) -> bytes:
    """A bundle's code as an ES module: its CSS injector and its asset base (where it has
    them) read the bundle's URL from import.meta.url instead of document.currentScript.
    Nothing else moves."""
    if code.startswith(_SCRIPT_JS_BASE):
        code = _MODULE_JS_BASE.ljust(len(_SCRIPT_JS_BASE)) + code[len(_SCRIPT_JS_BASE) :]
    start = code.rfind(b"\n" + INJECTOR_HEAD)
    if start >= 0:
        at = code.find(_SCRIPT_BASE, start)
        if at >= 0:
            module_base = _MODULE_BASE.ljust(len(_SCRIPT_BASE))
            code = code[:at] + module_base + code[at + len(_SCRIPT_BASE) :]
    return code


def loader_flags() -> list[str]:
    """The asset loaders, and CSS syntax errors as errors: esbuild only warns about them
    and drops the rule, which would leave a page silently unstyled."""
    return [
        *(f"--loader:{ext}=dataurl" for ext in ASSET_EXTENSIONS),
        "--log-override:css-syntax-error=error",
    ]


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


def asset_path(version: str, name: str) -> str:
    """Where a moved-out asset is served, relative to the bundle: under its version, so
    any replica can find it in that version's source by its hash."""
    return f"assets/{version}/{name}"


Edits = dict[int, list[tuple[int, int]]]  # line -> [(column, change in length)]


def move_out_css(
    css_pieces: Sequence[bytes], max_inline: int, version: str, store: Callable[[str, bytes], None]
) -> tuple[list[bytes], Edits]:
    """The pieces with each inlined image or font over ``max_inline`` bytes stored (by
    ``store``, under its content-hash name) and named relative to the bundle instead
    (``url(assets/...)``: the injector puts the bundle's directory in front in the page);
    also the edits, in the stylesheet the pieces make (for its source map)."""
    moved: list[bytes] = []
    spots: list[tuple[int, int]] = []
    at = 0
    for piece in css_pieces:
        new, piece_spots = _move_out(
            piece, DATA_URL, lambda path: b"url(" + path + b")", max_inline, version, store
        )
        moved.append(new)
        spots += [(at + offset, change) for offset, change in piece_spots]
        at += len(piece)
    return moved, by_line(b"".join(css_pieces), spots)


def move_out_js(
    code: bytes, max_inline: int, version: str, store: Callable[[str, bytes], None]
) -> tuple[bytes, Edits]:
    """``code`` with each large image or font a module imports (esbuild's data: URL
    string) stored and named relative to the bundle instead: the bundle's directory is
    taken when it runs (a line put before it), as a string in the code would resolve
    against the page. Also the edits made, for its source map."""
    new, spots = _move_out(
        code,
        JS_DATA_URL,
        lambda path: f'({JS_BASE_NAME}+"'.encode() + path + b'")',
        max_inline,
        version,
        store,
    )
    if not spots:
        return code, {}
    edits = by_line(code, spots)
    edits.setdefault(0, []).insert(0, (-1, len(JS_BASE_LINE)))  # before everything
    return JS_BASE_LINE + new, edits


def _move_out(
    text: bytes,
    pattern: re.Pattern[bytes],
    rewrite: Callable[[bytes], bytes],
    max_inline: int,
    version: str,
    store: Callable[[str, bytes], None],
) -> tuple[bytes, list[tuple[int, int]]]:
    """``text`` with each ``pattern`` match (an inlined asset) over ``max_inline`` stored
    and replaced by ``rewrite(its path)``; also (offset in ``text``, change in length)."""
    spots: list[tuple[int, int]] = []

    def replace(match: re.Match[bytes]) -> bytes:
        ext = ASSET_EXTENSION_OF.get(match.group(2).decode())
        try:
            data = base64.b64decode(match.group(3), validate=True)
        except binascii.Error:
            return match.group(0)
        if ext is None or len(data) <= max_inline:
            return match.group(0)
        name = f"{hashlib.sha256(data).hexdigest()[:32]}.{ext}"
        store(name, data)
        new = rewrite(asset_path(version, name).encode())
        spots.append((match.start(), len(new) - len(match.group(0))))
        return new

    return pattern.sub(replace, text), spots


def by_line(text: bytes, spots: Sequence[tuple[int, int]]) -> Edits:
    """(offset, change) spots of ``text`` as a source map counts them: by line, column."""
    edits: Edits = {}
    for offset, change in spots:
        line = text.count(b"\n", 0, offset)
        column = offset - (text.rfind(b"\n", 0, offset) + 1)
        edits.setdefault(line, []).append((column, change))
    return edits


def shift_map(raw_map: bytes, edits: Edits) -> bytes:
    """A source map whose generated text was edited as ``edits`` say."""
    if not edits:
        return raw_map
    source_map = json.loads(raw_map)
    source_map["mappings"] = _shift_columns(source_map["mappings"], edits)
    return json.dumps(source_map).encode()


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _vlq_decode(segment: str) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for char in segment:
        digit = _B64.index(char)
        value += (digit & 31) << shift
        if digit & 32:
            shift += 5
            continue
        values.append(-(value >> 1) if value & 1 else value >> 1)
        value = shift = 0
    return values


def _vlq_encode(values: Sequence[int]) -> str:
    out = []
    for number in values:
        rest = (-number << 1) | 1 if number < 0 else number << 1
        while True:
            digit, rest = rest & 31, rest >> 5
            out.append(_B64[digit | (32 if rest else 0)])
            if not rest:
                break
    return "".join(out)


def _shift_columns(mappings: str, edits: Mapping[int, Sequence[tuple[int, int]]]) -> str:
    """Source-map ``mappings`` with each segment of a line moved by the edits before it
    ((column, change in length)). Only generated columns change; they are relative to
    the previous segment of the same line, the other fields to the previous segment."""
    lines = mappings.split(";")
    for line, changes in edits.items():
        if line >= len(lines) or not lines[line]:
            continue
        out = []
        old_column = new_column = 0
        for segment in lines[line].split(","):
            values = _vlq_decode(segment)
            old_column += values[0]
            moved = old_column + sum(delta for at, delta in changes if at < old_column)
            values[0], new_column = moved - new_column, moved
            out.append(_vlq_encode(values))
        lines[line] = ",".join(out)
    return ";".join(lines)


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
