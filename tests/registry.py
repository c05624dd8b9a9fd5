"""A static npm registry on loopback, for the real npm client to install from.

Packuments (the JSON document of a package's versions) and tarballs are files in a
directory, written by ``publish``; the server hands them out as they are, the way a
registry behind a CDN does. Real packages and their dependency trees come from
``npm pack`` (cached in tests/.cache, like tests/packages.py); fixture packages of
the tests are published next to them.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.packages import CACHE, npm_tarball


def package_json_of(tarball: bytes) -> dict[str, Any]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar:
            if member.name.split("/", 1)[-1] == "package.json" and member.name.count("/") == 1:
                source = tar.extractfile(member)
                assert source is not None
                data: dict[str, Any] = json.loads(source.read())
                return data
    raise ValueError("tarball has no package.json")


def dependency_tree(name: str, version: str) -> list[tuple[str, str]]:
    """(name, version) of every package ``npm install name@version`` would install (from
    the public registry, once: cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = CACHE / f"tree-{name.lstrip('@').replace('/', '-')}-{version}.json"
    if not cached.exists():
        npm = shutil.which("npm")
        assert npm, "npm is required to fetch real packages for the tests"
        with tempfile.TemporaryDirectory() as work:
            Path(work, "package.json").write_text(
                json.dumps({"name": "tree", "version": "0.0.0", "dependencies": {name: version}})
            )
            subprocess.run(
                [npm, "install", "--package-lock-only", "--ignore-scripts", "--omit=dev",
                 "--no-audit", "--no-fund", "--silent"],
                cwd=work, check=True, capture_output=True, timeout=180,
            )  # fmt: skip
            lock = json.loads(Path(work, "package-lock.json").read_text())
        tree = sorted(
            {
                (entry.get("name") or path.rsplit("node_modules/", 1)[1], entry["version"])
                for path, entry in lock["packages"].items()
                if path and not entry.get("dev") and not entry.get("link")
            }
        )
        cached.write_text(json.dumps(tree))
    return [(n, v) for n, v in json.loads(cached.read_text())]


class StaticRegistry:
    """Files under ``root``: ``<name>`` (a packument; ``@scope/name`` for scoped ones) and
    ``-/<file>.tgz``. ``hold`` stalls requests for chosen tarballs until released."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.hits: collections.Counter[str] = collections.Counter()  # path -> GETs
        self.held: dict[str, asyncio.Event] = {}
        root.mkdir(parents=True, exist_ok=True)

    def publish(self, tarball: bytes) -> dict[str, Any]:
        """Adds the tarball's version to its packument (its package.json, as the registry
        would); returns that package.json."""
        manifest = package_json_of(tarball)
        name, version = manifest["name"], manifest["version"]
        filename = f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        (self.root / "-").mkdir(exist_ok=True)
        (self.root / "-" / filename).write_bytes(tarball)
        doc_path = self.root / name
        doc_path.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(doc_path.read_text()) if doc_path.exists() else {
            "name": name, "dist-tags": {}, "versions": {}
        }  # fmt: skip
        doc["versions"][version] = {
            **manifest,
            "_id": f"{name}@{version}",
            "dist": {
                "tarball": f"{{registry}}/-/{filename}",
                "shasum": hashlib.sha1(tarball).hexdigest(),
                "integrity": "sha512-"
                + base64.b64encode(hashlib.sha512(tarball).digest()).decode(),
            },
        }
        doc["dist-tags"]["latest"] = version
        doc_path.write_text(json.dumps(doc))
        return manifest

    def publish_real(self, name: str, version: str) -> None:
        """A real package and its whole production dependency tree."""
        for dep_name, dep_version in dependency_tree(name, version):
            self.publish(npm_tarball(dep_name, dep_version))

    def bake(self, url: str) -> None:
        """Writes the registry's address into its packuments, for a plain static file server
        (python -m http.server) to serve them as they are."""
        for doc in self.root.rglob("*"):
            if doc.is_file() and doc.parent.name != "-":
                doc.write_text(doc.read_text().replace("{registry}", url))

    def hold(self, filename: str) -> asyncio.Event:
        """Requests for ``-/<filename>`` wait until the returned event is set."""
        event = self.held[filename] = asyncio.Event()
        return event

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = urllib.parse.unquote(request.match_info["path"])
        self.hits[path] += 1
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            return web.json_response({"error": "Not found"}, status=404)
        held = self.held.get(path.removeprefix("-/"))
        if held is not None:
            await held.wait()
        if path.startswith("-/"):
            return web.Response(body=file.read_bytes(), content_type="application/octet-stream")
        # The tarball URLs name wherever the registry is served from.
        text = file.read_text().replace("{registry}", self.url)
        return web.Response(text=text, content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.+}", self.handle)
        return app

    def tarball_gets(self, name: str) -> int:
        prefix = f"-/{name.lstrip('@').replace('/', '-')}-"
        return sum(n for path, n in self.hits.items() if path.startswith(prefix))
