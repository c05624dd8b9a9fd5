"""The npm client, run as a subprocess, for ``--source npm:NAME``.

A version is fetched with ``npm pack NAME@VERSION`` (the registry, its auth and
proxies exactly as the npm client is configured: ``.npmrc``, ``npm_config_*``)
and then, once unpacked like any source tarball, its production dependencies are
installed into its own ``node_modules`` by ``npm install``. Lifecycle scripts
never run, there are no audit or funding calls, the cache is private to the
data dir, every run has a deadline (its whole process group is killed at it),
and the installed tree is held to the extraction caps while npm writes it.

What npm says goes to the log whole; an answer gets one line of it, with no
URL (a private registry's address is nobody's business).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundler.children import die_with_parent
from bundler.errors import ConfigError, SourceUnavailable, VersionNotFound

logger = logging.getLogger(__name__)

# An npm package name (lowercase for new packages; older ones may have capitals).
NAME = re.compile(r"^(?:@[a-z0-9][a-z0-9._~-]*/)?[a-zA-Z0-9][a-zA-Z0-9._~-]*$")
# How often the installed tree is measured against the caps while npm writes it.
WATCH_INTERVAL_S = 0.5
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
MAX_REASON_CHARS = 300
NOT_FOUND_CODES = ("E404", "ETARGET")
# Flags of every npm run: nothing runs, reports or asks anything but the registry.
COMMON_FLAGS = (
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--no-update-notifier",
    "--loglevel=error",
    "--color=false",
)


def valid_package_name(name: str) -> bool:
    return len(name) <= 214 and NAME.match(name) is not None


@dataclass(frozen=True)
class InstallCaps:
    max_files: int
    max_bytes: int


class NpmError(SourceUnavailable):
    pass


def one_line(output: str) -> str:
    """npm's first error line, for an answer: no URL, no machine path, bounded."""
    lines = [
        ln.removeprefix("npm error ").removeprefix("npm ERR! ").strip()
        for ln in output.splitlines()
    ]
    useful = [
        ln
        for ln in lines
        if ln and not ln.startswith(("code ", "A complete log", "errno ", "path "))
    ]
    text = URL.sub("<registry>", useful[0] if useful else "npm failed without a message")
    return re.sub(r"(?<![\w.])/\S+", "<path>", text)[:MAX_REASON_CHARS]


def error_code(output: str) -> str | None:
    match = re.search(r"^npm (?:error|ERR!) code (\S+)", output, re.MULTILINE)
    return match.group(1) if match else None


class NpmClient:
    def __init__(self, cache_dir: Path, registry: str = "", npm: str | None = None) -> None:
        found = npm or shutil.which("npm")
        if not found:
            raise ConfigError("npm sources need the npm client on PATH (Node.js's npm)")
        self.npm = found
        self.cache_dir = cache_dir
        self.registry = registry

    def _flags(self) -> list[str]:
        flags = [*COMMON_FLAGS, f"--cache={self.cache_dir}"]
        if self.registry:
            flags.append(f"--registry={self.registry}")
        return flags

    async def pack(self, package: str, version: str, dest: Path, timeout_s: float) -> Path:
        """The package's published tarball, fetched into ``dest``; VersionNotFound when the
        registry has no such version."""
        out = await self._run(
            ["pack", f"{package}@{version}", f"--pack-destination={dest}", "--json"],
            dest,
            timeout_s,
            what=f"fetching {package}@{version}",
            missing=VersionNotFound(f"version {version!r} does not exist in the npm registry"),
        )
        try:
            filename = json.loads(out)[0]["filename"]
        except (ValueError, LookupError, TypeError):
            raise NpmError(f"npm pack of {package}@{version} said nothing usable") from None
        # npm names a scoped package's tarball scope-name-version.tgz.
        tarball = dest / os.path.basename(str(filename).replace("/", "-").lstrip("@"))
        if not tarball.is_file():
            raise NpmError(f"npm pack of {package}@{version} wrote no tarball")
        return tarball

    async def install(self, root: Path, caps: InstallCaps, timeout_s: float, version: str) -> None:
        """The production dependencies of the package at ``root``, into ``root/node_modules``."""
        published = await asyncio.to_thread(_prepare_for_install, root)
        what = f"installing the dependencies of version {version}"
        try:
            await self._run(
                ["install", "--omit=dev", "--no-bin-links", "--no-save"],
                root,
                timeout_s,
                what=what,
                watch=(root, caps),
            )
            # The watch looks every WATCH_INTERVAL_S: a quick install may finish between.
            await asyncio.to_thread(check_caps, root, caps, what)
        finally:
            if published is not None:
                await asyncio.to_thread((root / "package.json").write_bytes, published)

    async def versions(self, package: str, timeout_s: float) -> list[str]:
        out = await self._run(
            ["view", package, "versions", "--json"],
            self.cache_dir,
            timeout_s,
            what=f"listing the versions of {package}",
        )
        try:
            listed = json.loads(out or "[]")
        except ValueError:
            raise NpmError(f"npm view {package} said nothing usable") from None
        return [listed] if isinstance(listed, str) else [str(v) for v in listed]

    async def _run(
        self,
        args: Sequence[str],
        cwd: Path,
        timeout_s: float,
        *,
        what: str,
        missing: BaseException | None = None,
        watch: tuple[Path, InstallCaps] | None = None,
    ) -> str:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            self.npm,
            *args,
            *self._flags(),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole
            preexec_fn=die_with_parent,
        )
        watcher = None
        if watch is not None:
            watcher = asyncio.ensure_future(_watch(*watch, what=what))
        communicate = asyncio.ensure_future(proc.communicate())
        try:
            waiting = {communicate} | ({watcher} if watcher else set())
            done, _ = await asyncio.wait(
                waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if watcher is not None and watcher in done:
                watcher.result()  # raises: over the caps
            if communicate not in done:
                raise NpmError(f"{what} took longer than {timeout_s:g} s; retry later")
            out, err = communicate.result()
        finally:
            if watcher is not None:
                watcher.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            if not communicate.done():
                communicate.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await communicate
        text = err.decode("utf-8", "replace")
        if proc.returncode != 0:
            code = error_code(text)
            logger.warning(
                "npm failed",
                extra={
                    "npm_args": list(args),
                    "returncode": proc.returncode,
                    "stderr": text[-4000:],
                },
            )
            if code in NOT_FOUND_CODES and missing is not None:
                raise missing
            if code in NOT_FOUND_CODES:
                raise NpmError(f"{what} failed: a package is not in the registry: {one_line(text)}")
            raise NpmError(f"{what} failed: {one_line(text)}")
        return out.decode("utf-8", "replace")


def _prepare_for_install(root: Path) -> bytes | None:
    """Removes the package's own .npmrc (its config never applies) and shows npm the
    production part of package.json: npm resolves devDependencies even when it omits
    them (dozens of registry requests for a typical library). Returns the published
    package.json, to be put back (None: there is none)."""
    (root / ".npmrc").unlink(missing_ok=True)
    manifest = root / "package.json"
    published = manifest.read_bytes() if manifest.is_file() else None
    if published is not None:
        manifest.write_text(json.dumps(_production_part(json.loads(published))))
    return published


def _production_part(manifest: Any) -> Any:
    """What npm needs to install a package's production dependencies, and nothing that
    would make it fetch or run more."""
    if not isinstance(manifest, dict):
        return manifest
    return {
        k: v for k, v in manifest.items() if k not in ("devDependencies", "scripts", "workspaces")
    }


async def _watch(root: Path, caps: InstallCaps, *, what: str) -> None:
    """Returns never; raises once the tree under ``root`` is over the caps."""
    while True:
        await asyncio.sleep(WATCH_INTERVAL_S)
        await asyncio.to_thread(check_caps, root, caps, what)


def check_caps(root: Path, caps: InstallCaps, what: str) -> None:
    files = 0
    total = 0
    for dirpath, _, filenames in os.walk(root):
        files += len(filenames)
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
        if files > caps.max_files:
            raise NpmError(f"{what}: the installed tree has more than {caps.max_files} files")
        if total > caps.max_bytes:
            raise NpmError(f"{what}: the installed tree is larger than {caps.max_bytes} bytes")
