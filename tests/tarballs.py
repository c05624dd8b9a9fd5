"""Real tarballs for tests, good and malicious, and a real artifact server that serves them."""

from __future__ import annotations

import asyncio
import collections
import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

LIB_FILES = {
    "index.js": b'export { greet } from "./greet.js";\n',
    "greet.js": b'import { shout } from "shouty";\nexport function greet(n) { return shout("hi " + n); }\n',
    "math/add.js": b"export const add = (a, b) => a + b;\n",
    "node_modules/shouty/package.json": b'{"name": "shouty", "main": "main.js"}\n',
    "node_modules/shouty/main.js": b"export const shout = (s) => s.toUpperCase() + '!';\n",
}


def make_tarball(
    files: dict[str, bytes],
    *,
    prefix: str = "package/",
    extra: Callable[[tarfile.TarFile], None] | None = None,
) -> bytes:
    """A gzipped tarball, npm-style by default (everything under one top folder)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def gzip_bomb(uncompressed_bytes: int) -> bytes:
    """One member of zeros: tiny compressed, huge uncompressed (the header tells the truth)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        info = tarfile.TarInfo("package/zeros.js")
        info.size = uncompressed_bytes
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
        zeros = bytes(1024 * 1024)
        left = uncompressed_bytes
        while left > 0:
            gz.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)
        gz.write(bytes(1024))
    return buf.getvalue()


@dataclass
class ArtifactServer:
    """Serves /pkg-<version>.tgz (and .sha256) from memory; each behaviour is a real HTTP one."""

    tarballs: dict[str, bytes] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    fail_first: dict[str, int] = field(default_factory=dict)  # version -> 500s before success
    truncate: set[str] = field(default_factory=set)
    slow_s: float = 0.0
    url: str = ""

    def publish(self, version: str, data: bytes) -> None:
        self.tarballs[version] = data
        self.checksums[version] = hashlib.sha256(data).hexdigest()

    @property
    def template(self) -> str:
        return self.url + "/pkg-{version}.tgz"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name.endswith(".sha256"):
            version = name.removesuffix(".tgz.sha256")
            if version not in self.checksums:
                raise web.HTTPNotFound()
            return web.Response(text=f"{self.checksums[version]}  pkg-{version}.tgz\n")
        version = name.removesuffix(".tgz")
        self.hits[version] += 1
        if self.fail_first.get(version, 0) >= self.hits[version]:
            raise web.HTTPInternalServerError()
        if version not in self.tarballs:
            raise web.HTTPNotFound()
        data = self.tarballs[version]
        resp = web.StreamResponse(headers={"Content-Type": "application/gzip"})
        resp.content_length = len(data)
        await resp.prepare(request)
        if version in self.truncate:
            await resp.write(data[: len(data) // 2])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return resp
        for i in range(0, len(data), 4096):
            if self.slow_s:
                await asyncio.sleep(self.slow_s)
            await resp.write(data[i : i + 4096])
        await resp.write_eof()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/pkg-{name}", self.handle)
        return app


async def npm_package_source(aiohttp_server: Any, package: str, *versions: str) -> str:
    """A loopback artifact server holding ``package``'s real npm tarballs (``npm pack``,
    cached): the ``--source`` template that pulls them."""
    from tests.packages import npm_tarball

    artifacts = ArtifactServer()
    for version in versions:
        artifacts.publish(version, npm_tarball(package, version))
    served = await aiohttp_server(artifacts.app())
    artifacts.url = f"http://127.0.0.1:{served.port}"
    return artifacts.template
