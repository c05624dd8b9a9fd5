"""Download one version tarball: streamed to a file, capped, deadlined, retried, verified.

Retries (with full-jitter exponential backoff) cover what a retry can fix:
connection errors, truncated bodies and 5xx. A 404 means the version does not
exist and is never retried; other 4xx are the configuration's fault.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bundler.errors import SourceUnavailable, VersionNotFound

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# A published .sha256 file is one line; anything bigger is not a checksum file.
MAX_CHECKSUM_FILE_BYTES = 4096


class _Retryable(Exception):
    pass


@dataclass(frozen=True)
class DownloadPolicy:
    max_bytes: int
    timeout_s: float
    retries: int
    backoff_s: float
    # "none", "published" ({url}.sha256) or pinned digests by version.
    checksum: str | dict[str, str]


def parse_checksum_setting(value: str) -> str | dict[str, str]:
    """``none``, ``published``, or ``VERSION:HEX,VERSION:HEX`` pins; raises ValueError."""
    if value in ("none", "published"):
        return value
    pins = {}
    for item in value.split(","):
        version, _, digest = item.strip().partition(":")
        if not version or not HEX_DIGEST.match(digest.lower()):
            raise ValueError(f"expected none, published or VERSION:SHA256HEX pairs, got {item!r}")
        pins[version] = digest.lower()
    return pins


async def download(
    session: aiohttp.ClientSession, url: str, version: str, dest: Path, policy: DownloadPolicy
) -> None:
    """Fetch ``url`` into ``dest`` (replacing it), within the whole-pull deadline."""
    try:
        async with asyncio.timeout(policy.timeout_s):
            digest = await _retrying(policy, lambda: _fetch(session, url, dest, policy.max_bytes))
            expected = await _expected_digest(session, url, version, policy)
    except TimeoutError:
        raise SourceUnavailable(
            f"downloading version {version} took longer than {policy.timeout_s:g} s"
        ) from None
    if expected is not None and digest != expected:
        raise SourceUnavailable(
            f"version {version}: the tarball's SHA-256 {digest} does not match the expected {expected}"
        )


def _detail(exc: BaseException) -> str:
    """For the log only: the failure with its cause (which names the internal host)."""
    return f"{exc}: {exc.__cause__}" if exc.__cause__ is not None else str(exc)


async def _retrying(policy: DownloadPolicy, attempt_fn: Callable[[], Awaitable[str]]) -> str:
    for attempt in range(policy.retries + 1):
        try:
            return await attempt_fn()
        except _Retryable as exc:
            if attempt == policy.retries:
                logger.warning("download failed", extra={"error": _detail(exc)})
                raise SourceUnavailable(
                    f"the artifact server failed {attempt + 1} times, last with {exc}"
                ) from None
            delay = random.uniform(0, policy.backoff_s * 2**attempt)
            logger.warning(
                "download failed, retrying", extra={"error": _detail(exc), "in_s": round(delay, 3)}
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _fetch(session: aiohttp.ClientSession, url: str, dest: Path, max_bytes: int) -> str:
    sha = hashlib.sha256()
    received = 0
    try:
        async with session.get(url) as resp:
            if resp.status == 404:
                raise VersionNotFound("this version does not exist at the artifact server")
            _check_status(resp.status)
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise SourceUnavailable(f"the source tarball is larger than {max_bytes} bytes")
            with dest.open("wb") as out:
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise SourceUnavailable(
                            f"the source tarball is larger than {max_bytes} bytes"
                        )
                    sha.update(chunk)
                    out.write(chunk)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # Only the kind of failure goes to clients: the text names internal hosts.
        raise _Retryable(type(exc).__name__) from exc
    return sha.hexdigest()


async def _fetch_published_digest(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with session.get(url + ".sha256") as resp:
            if resp.status == 404:
                raise SourceUnavailable("the artifact server publishes no .sha256 for this tarball")
            _check_status(resp.status)
            text = (await resp.content.read(MAX_CHECKSUM_FILE_BYTES)).decode("ascii", "replace")
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        # Only the kind of failure goes to clients: the text names internal hosts.
        raise _Retryable(type(exc).__name__) from exc
    digest = (text.split() or [""])[0].lower()  # "hex" or sha256sum's "hex  name"
    if not HEX_DIGEST.match(digest):
        raise SourceUnavailable("the published .sha256 file does not hold a SHA-256 digest")
    return digest


def _check_status(status: int) -> None:
    if status >= 500:
        raise _Retryable(f"HTTP {status}")
    if status != 200:
        raise SourceUnavailable(f"the artifact server answered HTTP {status}")


async def _expected_digest(
    session: aiohttp.ClientSession, url: str, version: str, policy: DownloadPolicy
) -> str | None:
    if policy.checksum == "none":
        return None
    if isinstance(policy.checksum, dict):
        if version not in policy.checksum:
            raise SourceUnavailable(f"no pinned SHA-256 for version {version} in the settings")
        return policy.checksum[version]
    return await _retrying(policy, lambda: _fetch_published_digest(session, url))
