"""The disk tier: built bundles that survive a restart (the emptyDir outlives the container).

One file per bundle, ``<data>/cache/<key[:2]>/<key>.bundle``: a header line of
JSON (each part's length and SHA-256), then the parts (code, gzip, brotli,
source map; gzip is written empty since it is made on demand, and read past in
entries written before). It is written to a temp file in the same directory, fsynced,
``os.replace``d into place, and the directory fsynced: a reader sees the old
file or the new one, never half of one. Every read verifies every part's
checksum; a torn or corrupt file (a crash mid-write on a filesystem that lies,
a bad disk, a hand edit) is a miss, deleted and logged, never served.

The tier is bounded in bytes, least recently used first out. Its index is kept
in memory, rebuilt by a scan at start (recency from file mtimes). All file work
runs in a thread; callers use the async methods.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from bundler.bundle import Bundle
from bundler.fsutil import atomic_write

logger = logging.getLogger(__name__)

MAGIC = b"bundler-entry-1\n"
SUFFIX = ".bundle"
# "marks" and "inputs": where a tailored bundle names its version and what it was built
# from (bundler.carry); an entry written before them has neither, and is read as a
# bundle that is never carried.
PARTS = ("code", "gzip", "br", "sourcemap", "marks", "inputs")
EMPTY_PART = [0, hashlib.sha256(b"").hexdigest()]
# A header is a few hundred bytes; anything longer is not one of ours.
MAX_HEADER_BYTES = 4096
# Bundles waiting for the writer thread, at most (their bytes stay in memory meanwhile).
MAX_PENDING_BYTES = 8 * 1024 * 1024


class CorruptEntry(Exception):
    pass


def encode_entry(bundle: Bundle) -> bytes:
    parts = {
        "code": bundle.code,
        "gzip": b"",
        "br": bundle.br,
        "sourcemap": bundle.sourcemap or b"",
        "marks": json.dumps(bundle.version_at).encode() if bundle.version_at else b"",
        "inputs": bundle.inputs,
    }
    header = {
        "key": bundle.key,
        "etag_prefix": bundle.etag_prefix,
        "has_sourcemap": bundle.sourcemap is not None,
        "parts": {
            name: [len(data), hashlib.sha256(data).hexdigest()] for name, data in parts.items()
        },
    }
    return MAGIC + json.dumps(header).encode() + b"\n" + b"".join(parts[name] for name in PARTS)


def decode_entry(raw: bytes, key: str) -> Bundle:
    if not raw.startswith(MAGIC):
        raise CorruptEntry("bad magic")
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES)
    if end < 0:
        raise CorruptEntry("no header")
    try:
        header = json.loads(raw[len(MAGIC) : end])
        described = [header["parts"].get(name, EMPTY_PART) for name in PARTS]
        lengths = [int(length) for length, _ in described]
        digests = [str(digest) for _, digest in described]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CorruptEntry(f"bad header: {exc}") from None
    if header.get("key") != key:
        raise CorruptEntry("entry of another key")
    body = memoryview(raw)[end + 1 :]
    if len(body) != sum(lengths):
        raise CorruptEntry(f"size {len(body)} != {sum(lengths)}")
    parts: dict[str, bytes] = {}
    offset = 0
    for name, length, digest in zip(PARTS, lengths, digests, strict=True):
        data = bytes(body[offset : offset + length])
        offset += length
        if hashlib.sha256(data).hexdigest() != digest:
            raise CorruptEntry(f"checksum of {name}")
        parts[name] = data
    code = parts["code"]
    try:
        marks = json.loads(parts["marks"]) if parts["marks"] else ()
        version_at = tuple((int(at), int(form)) for at, form in marks)
    except (ValueError, TypeError) as exc:
        raise CorruptEntry(f"bad marks: {exc}") from None
    return Bundle(
        key=key,
        code=code,
        br=parts["br"],
        digest=digests[0],
        sourcemap=parts["sourcemap"] if header.get("has_sourcemap") else None,
        etag_prefix=str(header.get("etag_prefix", "")),
        version_at=version_at,
        inputs=parts["inputs"],
    )


class DiskTier:
    def __init__(self, root: Path, max_bytes: int, min_free_bytes: int = 0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Free space the tier leaves on its volume (builds, pulls and fallbacks need it too).
        self.min_free_bytes = min_free_bytes
        self._index: collections.OrderedDict[str, int] = collections.OrderedDict()  # key -> bytes
        self._bytes = 0
        self._lock = threading.Lock()  # the index is touched from worker threads
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="disk-writer")
        self._pending_bytes = 0  # bundles queued for the writer (touched on the loop only)
        self.skipped = 0  # writes not queued because the backlog was full
        self.corrupt = 0

    def entries(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def stored_bytes(self) -> int:
        return self._bytes

    @property
    def pending_bytes(self) -> int:
        """Bytes of bundles queued for the writer thread."""
        return self._pending_bytes

    def path(self, key: str) -> Path:
        return self.root / key[:2] / (key + SUFFIX)

    # -- synchronous (thread) side

    def scan(self) -> None:
        """Rebuild the index from the files; oldest mtime first. Drops leftover temp files."""
        entries = []
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith("."):  # a temp file of a write that never finished
                    f.unlink(missing_ok=True)
                elif f.name.endswith(SUFFIX):
                    st = f.stat()
                    entries.append((st.st_mtime, f.name[: -len(SUFFIX)], st.st_size))
        with self._lock:
            self._index.clear()
            self._bytes = 0
            for _, key, size in sorted(entries):
                self._index[key] = size
                self._bytes += size
        self._evict()

    def read(self, key: str) -> Bundle | None:
        """The entry, verified; also one another process (``bundler warm``) wrote."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
            bundle = decode_entry(raw, key)
        except FileNotFoundError:
            self._forget(key)
            return None
        except CorruptEntry as exc:
            self.corrupt += 1
            logger.error("corrupt cache entry deleted", extra={"key": key, "problem": str(exc)})
            self._forget(key)
            path.unlink(missing_ok=True)
            return None
        with self._lock:
            self._bytes += len(raw) - self._index.pop(key, 0)
            self._index[key] = len(raw)
        with contextlib.suppress(OSError):
            os.utime(path)  # recency survives a restart
        self._evict()
        return bundle

    def write(self, bundle: Bundle) -> None:
        data = encode_entry(bundle)
        if len(data) > self.max_bytes or not self._room_for(len(data)):
            return
        try:
            atomic_write(self.path(bundle.key), data)
        except OSError as exc:
            # A full volume (whatever filled it, this tier too when min_free_bytes is 0):
            # the oldest entries make room, once; then the write is given up (raised).
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._free(2 * len(data)):
                raise
            atomic_write(self.path(bundle.key), data)
        with self._lock:
            self._bytes += len(data) - self._index.pop(bundle.key, 0)
            self._index[bundle.key] = len(data)
        self._evict()

    def _room_for(self, size: int) -> bool:
        """Bounded by the volume's free space as well as by max_bytes: the least recently
        used entries go until ``size`` fits above min_free_bytes; if it cannot, no write."""
        if not self.min_free_bytes:
            return True
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        while free - size < self.min_free_bytes:
            with self._lock:
                if not self._index:
                    return False
                key, entry_size = self._index.popitem(last=False)
                self._bytes -= entry_size
            self.path(key).unlink(missing_ok=True)
            free += entry_size
        return True

    def _free(self, wanted: int) -> int:
        """Evicts the least recently used entries until ``wanted`` bytes are freed (or
        none is left); the bytes freed."""
        freed = 0
        while freed < wanted:
            with self._lock:
                if not self._index:
                    break
                key, size = self._index.popitem(last=False)
                self._bytes -= size
            self.path(key).unlink(missing_ok=True)
            freed += size
        return freed

    def _forget(self, key: str) -> None:
        with self._lock:
            self._bytes -= self._index.pop(key, 0)

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.max_bytes or not self._index:
                    return
                key, size = self._index.popitem(last=False)
                self._bytes -= size
            self.path(key).unlink(missing_ok=True)

    # -- the event loop's side

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.scan)
        except OSError as exc:  # a read-only or failing data dir: start empty, say so
            logger.error("disk cache unreadable; starting empty", extra={"error": str(exc)})
            return
        logger.info("disk cache", extra={"entries": self.entries(), "bytes": self._bytes})

    async def get(self, key: str) -> Bundle | None:
        return await asyncio.to_thread(self.read, key)

    async def put(self, bundle: Bundle) -> None:
        """Queues the write, unless MAX_PENDING_BYTES of bundles already wait for theirs:
        then this one is not written (a cache may miss; memory may not grow with a
        backlog: builds outpace a slow disk's fsyncs, 217 against ~100 a second seen)."""
        if self._pending_bytes + bundle.size > MAX_PENDING_BYTES and self._pending_bytes:
            self.skipped += 1
            return
        self._pending_bytes += bundle.size
        try:
            # Writes fsync, which can take a while on a busy disk: a thread of their own,
            # so they never hold up the shared pool that builds and reads use.
            await asyncio.get_running_loop().run_in_executor(self._writer, self.write, bundle)
        finally:
            self._pending_bytes -= bundle.size

    async def close(self) -> None:
        """Once the writes queued have ended (their fsyncs can take a while)."""
        await asyncio.to_thread(self._writer.shutdown, wait=True)
