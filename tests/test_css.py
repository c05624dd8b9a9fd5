"""Components' CSS (and the images and fonts it points at) travel inside the bundle."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bundler.app import create_app
from bundler.keys import SERVICE
from bundler.settings import Settings
from tests.conftest import EXAMPLES, NODE, run_in_node, wait_ready

ACCENT = "rgb(200, 30, 40)"

# A document just big enough for the injector: it records the style elements added.
FAKE_DOCUMENT = """
var added = [];
var document = {
  head: { appendChild: function (el) { added.push(el); } },
  createElement: function (tag) {
    return { tag: tag, attrs: {}, textContent: "",
             setAttribute: function (k, v) { this.attrs[k] = v; } };
  },
};
"""
STYLES = "added.map(function (el) { return [el.attrs['data-bundler-css'], el.textContent]; })"


def one_pixel_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xc8\x1e\x28"))
        + chunk(b"IEND", b"")
    )


def noisy_png(side: int = 64, seed: int = 7) -> bytes:
    """A PNG that does not compress below the inlining bound (about 12 KB)."""
    rng = random.Random(seed)
    rows = b"".join(
        b"\x00" + bytes(rng.randrange(256) for _ in range(side * 3)) for _ in range(side)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def write_styled_version(root: Path) -> None:
    """Components that import CSS; the CSS imports CSS and points at an image."""
    files = {
        "components/tokens.css": f":root {{ --accent: {ACCENT}; }}\n",
        "components/badge.css": '@import "./tokens.css";\n'
        f".badge {{ color: {ACCENT}; font-size: 18px; background: url(./dot.png) no-repeat; }}\n",
        "components/badge.js": 'import "./badge.css";\nimport dot from "./dot.png";\n'
        "export function render(text) {\n"
        '  return \'<span class="badge"><img class="badge-dot" src="\' + dot + \'">\' + text + "</span>";\n'
        "}\n",
        "components/tag.css": ".tag { color: rgb(0, 100, 0); }\n",
        "components/tag.js": 'import "./badge.css";\nimport "./tag.css";\n'
        "export function render(text) { return '<em class=\"tag badge\">' + text + '</em>'; }\n",
        "components/plain.js": "export const plain = 1;\n",
        "components/photo.css": ".photo { width: 64px; height: 64px; background: url(./big.png); }\n",
        "components/photo.js": 'import "./photo.css";\n'
        "export function render() { return '<div class=\"photo\"></div>'; }\n",
        "components/logo.js": 'import big from "./big.png";\n'
        "export function render() {\n"
        "  return '<img class=\"logo\" src=\"' + big + '\">';\n"
        "}\n",
        "components/missing.css": ".m { background: url(./not-there.png); }\n",
        "components/missing.js": 'import "./missing.css";\nexport const m = 1;\n',
        "components/bitmap.css": ".b { background: url(./picture.bmp); }\n",
        "components/unclosed.css": ".u { color: red;\n",
        "components/unclosed.js": 'import "./unclosed.css";\nexport const u = 1;\n',
        "components/bitmap.js": 'import "./bitmap.css";\nexport const b = 1;\n',
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "components/dot.png").write_bytes(one_pixel_png())
    (root / "components/big.png").write_bytes(noisy_png())
    (root / "components/picture.bmp").write_bytes(b"BM" + bytes(60))


@pytest.fixture
async def styled(
    aiohttp_client: Any, make_settings: Callable[..., Settings], tmp_path: Path
) -> TestClient:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    write_styled_version(source / "2.0.0")
    # A version whose CSS points outside it (a known limit: such a version gets no
    # fallback, as one whose JavaScript imports outside it; docs/architecture.md).
    outside = source / "2.1.0" / "components"
    outside.mkdir(parents=True)
    (outside / "outside.css").write_text(".o { background: url(../../../secret.png); }\n")
    (outside / "outside.js").write_text('import "./outside.css";\nexport const o = 1;\n')
    (outside / "reach.css").write_text('@import "../../../secret.css";\n.r { color: red; }\n')
    (outside / "reach.js").write_text('import "./reach.css";\nexport const r = 1;\n')
    (tmp_path / "secret.png").write_bytes(one_pixel_png())
    (tmp_path / "secret.css").write_text(".secret { content: 'machine-local'; }\n")
    client = await aiohttp_client(create_app(make_settings(source=str(source))))
    await wait_ready(client)
    return client


async def bundle(client: TestClient, modules: str) -> bytes:
    resp = await client.get(f"/bundle.js?modules={modules}&v=2.0.0")
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def test_css_travels_with_the_bundle_in_import_order(
    styled: TestClient, tmp_path: Path
) -> None:
    code = await bundle(styled, "components/tag")
    styles = run_in_node(tmp_path, code, STYLES, FAKE_DOCUMENT)
    texts = [text for _, text in styles]
    # tag.js imports badge.css (which imports tokens.css), then tag.css.
    assert [t.split("{")[0] for t in texts] == [":root", ".badge", ".tag"], texts
    assert "data:image/png;base64," in texts[1]  # the image it points at, inlined
    assert len({key for key, _ in styles}) == 3


async def test_two_bundles_sharing_a_module_add_its_css_once(
    styled: TestClient, tmp_path: Path
) -> None:
    """Each piece is keyed by its text: the second bundle adds only what is new."""
    badge = await bundle(styled, "components/badge")
    tag = await bundle(styled, "components/tag")
    both = badge + b"\n;\n" + tag
    styles = run_in_node(tmp_path, both, STYLES, FAKE_DOCUMENT)
    assert [t.split("{")[0] for _, t in styles] == [":root", ".badge", ".tag"]
    # Control: the same two bundles, each in a fresh document, add the shared pieces twice.
    separate = run_in_node(tmp_path, badge, STYLES, FAKE_DOCUMENT) + run_in_node(
        tmp_path, tag, STYLES, FAKE_DOCUMENT
    )
    assert len(separate) == 5


async def test_a_bundle_without_css_has_no_injector_and_runs_without_a_document(
    styled: TestClient, tmp_path: Path
) -> None:
    plain = await bundle(styled, "components/plain")
    assert b"bundler.css" not in plain and b"data:" not in plain
    # A bundle with CSS runs where there is no document (a worker, a test): nothing added.
    code = await bundle(styled, "components/badge")
    assert run_in_node(tmp_path, code, "typeof document") == "undefined"


async def test_an_image_imported_from_javascript_is_a_data_url(
    styled: TestClient, tmp_path: Path
) -> None:
    """Inlined, so it works wherever the bundle is served from (not a path that would
    resolve against the page)."""
    code = await bundle(styled, "components/badge")
    html = run_in_node(
        tmp_path, code, '__bundlerModules["components/badge"].render("new")', FAKE_DOCUMENT
    )
    assert 'src="data:image/png;base64,' in html


@pytest.mark.parametrize(
    ("module", "version", "says"),
    [
        ("components/missing", "2.0.0", "components/missing.css"),
        ("components/bitmap", "2.0.0", 'No loader is configured for ".bmp" files'),
        ("components/unclosed", "2.0.0", "components/unclosed.css:2:0"),
        ("components/outside", "2.1.0", "not self-contained"),
        ("components/reach", "2.1.0", "not self-contained"),
    ],
    ids=["missing file", "type not allowed", "syntax error", "url outside", "@import outside"],
)
async def test_what_css_points_at_is_checked_like_an_import(
    styled: TestClient, tmp_path: Path, module: str, version: str, says: str
) -> None:
    resp = await styled.get(f"/bundle.js?modules={module}&v={version}")
    text = await resp.text()
    assert resp.status == 422, text
    assert says in text
    assert str(tmp_path) not in text and "machine-local" not in text  # nothing from outside


async def test_the_fallback_carries_the_css_of_its_modules(
    styled: TestClient, tmp_path: Path
) -> None:
    """The modules whose CSS builds are in it with their CSS; those pointing at a missing
    file, an unknown type or outside the version are left out, the rest is built."""
    fallbacks = styled.server.app[SERVICE].fallbacks
    fallback = await fallbacks.get("2.0.0")
    assert fallback is not None
    assert {"components/badge", "components/tag"} <= fallback.names
    assert not {"components/missing", "components/bitmap", "components/unclosed"} & fallback.names
    styles = run_in_node(tmp_path, fallback.bundle.code, STYLES, FAKE_DOCUMENT)
    assert [t.split("{")[0] for _, t in styles] == [":root", ".badge", ".photo", ".tag"]
    assert "components/logo" in fallback.names


async def test_a_page_may_link_the_css_instead(styled: TestClient) -> None:
    """/bundle.css: the same CSS as one stylesheet, with the bundle's caching rules;
    /bundle.js?css=link: the same bundle without the lines that add it."""
    query = "modules=components/tag&v=2.0.0"
    resp = await styled.get(f"/bundle.css?{query}", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/css; charset=utf-8"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    sheet = await resp.text()
    assert [rule.split("{")[0] for rule in sheet.split()][:1] == [":root"]
    assert sheet.index(":root") < sheet.index(".badge") < sheet.index(".tag")
    etag = resp.headers["ETag"]
    again = await styled.get(
        f"/bundle.css?{query}", headers={"If-None-Match": etag, "Accept-Encoding": "identity"}
    )
    assert again.status == 304
    br = await styled.get(f"/bundle.css?{query}", headers={"Accept-Encoding": "br"})
    assert br.headers["Content-Encoding"] == "br" and br.headers["ETag"] != etag

    injecting = await (await styled.get(f"/bundle.js?{query}")).read()
    linked = await (await styled.get(f"/bundle.js?{query}&css=link")).read()
    assert b"bundler.css" in injecting and b"bundler.css" not in linked
    assert injecting.startswith(linked.split(b"\n//# sourceMappingURL")[0])
    assert linked.endswith(injecting[injecting.rindex(b"//# sourceMappingURL") :])

    plain = await styled.get("/bundle.css?modules=components/plain&v=2.0.0")
    assert plain.status == 200 and await plain.text() == ""


@pytest.mark.parametrize(
    "query",
    [
        "modules=components/tag&v=2.0.0&css=none",
        "modules=components/tag&v=2.0.0&css=link&css=link",
    ],
)
async def test_the_css_parameter_is_inject_or_link_once(styled: TestClient, query: str) -> None:
    resp = await styled.get(f"/bundle.js?{query}")
    assert resp.status == 400
    assert "css= is inject" in await resp.text()


async def test_bundle_css_takes_no_css_parameter(styled: TestClient) -> None:
    resp = await styled.get("/bundle.css?modules=components/tag&v=2.0.0&css=link")
    assert resp.status == 400
    assert "unknown query parameter" in await resp.text()


async def test_a_large_image_is_served_by_its_hash_relative_to_the_bundle(
    styled: TestClient, tmp_path: Path
) -> None:
    """Over --asset-inline-max-bytes: stored once under its content hash, served immutable
    with its type and nosniff, named relative to the bundle (a CDN, a path prefix)."""
    big = (tmp_path / "src" / "2.0.0" / "components" / "big.png").read_bytes()
    assert len(big) > 8192
    name = f"{hashlib.sha256(big).hexdigest()[:32]}.png"
    code = await bundle(styled, "components/photo")
    assert b"data:image/png" not in code
    page = FAKE_DOCUMENT + 'document.currentScript = {src: "https://cdn.example/js/bundle.js?q"};'
    styles = run_in_node(tmp_path, code, STYLES, page)
    assert f"url(https://cdn.example/js/assets/2.0.0/{name})" in styles[0][1]
    sheet = await (await styled.get("/bundle.css?modules=components/photo&v=2.0.0")).text()
    assert f"url(assets/2.0.0/{name})" in sheet  # relative to the stylesheet itself
    resp = await styled.get(f"/assets/2.0.0/{name}")
    assert resp.status == 200 and await resp.read() == big
    assert resp.headers["Content-Type"] == "image/png"
    assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for wrong in (
        "2.0.0/" + "0" * 32 + ".png",
        "2.0.0/" + name[:-3] + "exe",
        "2.0.0/x.png",
        "2.0.0/" + name.upper(),
        "9.9.9/" + "1" * 32 + ".png",  # the version is where to look when not stored
    ):
        missing = await styled.get(f"/assets/{wrong}")
        assert missing.status == 404, wrong


async def test_a_replica_that_did_not_build_the_bundle_finds_the_asset_by_its_hash(
    styled: TestClient, tmp_path: Path
) -> None:
    """A CDN may ask any pod for an asset a bundle built elsewhere names: a pod without it
    finds it in the version's source by its hash (and keeps it)."""
    big = (tmp_path / "src" / "2.0.0" / "components" / "big.png").read_bytes()
    name = f"{hashlib.sha256(big).hexdigest()[:32]}.png"
    stored = tmp_path / "data" / "assets" / name
    assert not stored.exists()  # no bundle has been built here
    resp = await styled.get(f"/assets/2.0.0/{name}")
    assert resp.status == 200 and await resp.read() == big
    assert stored.read_bytes() == big


# Node's own source-map reader (not ours): where a generated position comes from.
MAP_LOOKUP = r"""
const { SourceMap } = require("module");
const [mapJson, sheet, needles] = process.argv.slice(1);
const map = new SourceMap(JSON.parse(mapJson));
const lines = sheet.split("\n");
const out = {};
for (const needle of JSON.parse(needles)) {
  const line = lines.findIndex((l) => l.includes(needle));
  const entry = map.findEntry(line, lines[line].indexOf(needle));
  out[needle] = [entry.originalSource, entry.originalLine, entry.originalColumn];
}
process.stdout.write(JSON.stringify(out));
"""


async def test_bundle_css_has_a_source_map_that_fits_it(styled: TestClient) -> None:
    """Its rules map back to their files, also past a large image moved out of the text
    (which shortens the line: the columns after it are shifted to match)."""
    query = "modules=components/photo,components/tag&v=2.0.0"
    sheet = await (await styled.get(f"/bundle.css?{query}")).text()
    assert sheet.rstrip().endswith(f"/*# sourceMappingURL=bundle.css.map?{query} */")
    resp = await styled.get(f"/bundle.css.map?{query}")
    assert resp.status == 200
    source_map = await resp.text()
    assert "/tmp" not in source_map and str(Path.home()) not in source_map
    needles = [".photo{", ":root{", ".badge{", ".tag{"]
    assert all(n in sheet for n in needles) and "url(assets/" in sheet
    out = subprocess.run(
        [NODE, "-e", MAP_LOOKUP, source_map, sheet, json.dumps(needles)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    assert found[".photo{"][0].endswith("components/photo.css")
    assert found[":root{"][0].endswith("components/tokens.css")
    assert found[".badge{"][0].endswith("components/badge.css")
    assert found[".tag{"][0].endswith("components/tag.css")  # after the moved-out image
    assert found[".tag{"][1:] == [0, 0]
    # Modules without CSS have no CSS map.
    none = await styled.get("/bundle.css.map?modules=components/plain&v=2.0.0")
    assert none.status == 404 and "import no CSS" in await none.text()


async def test_a_large_image_imported_from_javascript_is_named_relative_to_the_bundle(
    styled: TestClient, tmp_path: Path
) -> None:
    """The bundle takes its own directory when it runs (a URL string in the code would
    resolve against the page); its source map still fits (columns shifted)."""
    big = (tmp_path / "src" / "2.0.0" / "components" / "big.png").read_bytes()
    name = f"{hashlib.sha256(big).hexdigest()[:32]}.png"
    code = await bundle(styled, "components/logo")
    assert b"data:image/png" not in code
    page = FAKE_DOCUMENT + 'document.currentScript = {src: "https://cdn.example/js/bundle.js?q"};'
    html = run_in_node(tmp_path, code, '__bundlerModules["components/logo"].render()', page)
    assert html == f'<img class="logo" src="https://cdn.example/js/assets/2.0.0/{name}">'
    assert (await styled.get(f"/assets/2.0.0/{name}")).status == 200
    source_map = await (await styled.get("/bundle.js.map?modules=components/logo&v=2.0.0")).text()
    needle = '\'<img class="logo" src="\''
    text = code.decode()
    assert needle in text
    out = subprocess.run(
        [NODE, "-e", MAP_LOOKUP, source_map, text, json.dumps([needle])],
        capture_output=True,
        text=True,
        check=True,
    )
    source, line, _ = json.loads(out.stdout)[needle]
    assert source.endswith("components/logo.js") and line == 2
