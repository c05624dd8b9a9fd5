"""One tarball's extraction, run in a child process (python -m bundler.unpack): parsing
thousands of members costs seconds of Python, which must not hold the GIL the
service's event loop needs. Kept free of asyncio and the rest of the service, so
the child starts in a few tens of milliseconds (bundler.extract, which imports
asyncio, took 0.19 s to import against 0.04 s for the interpreter alone).

Only regular files and directories are written; anything else (absolute or
``..`` paths, symlinks, hard links, devices, fifos) rejects the whole tarball.
Member count, per-file size and total size are capped while streaming, so a
decompression bomb is stopped before it fills the disk.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import sys
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bundler.children import die_with_parent
from bundler.errors import DISK_ERRNOS, SourceUnavailable
from bundler.fallback.candidates import candidates_from
from bundler.resolve import DECLARATION_SUFFIXES, read_package_json

FACTS = "facts.json"

CHUNK_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
# tar pads archives to a 10 KiB record; anything much beyond that is not padding.
MAX_TRAILING_BYTES = 1024 * 1024
# Never part of a browser bundle, and often half of a TypeScript package's files: a
# file create costs 20-500 us on the disks seen, so a 5,300-file package spends
# seconds of its pull on declaration files nobody reads.
SKIPPED_SUFFIXES = DECLARATION_SUFFIXES
# File creates run in parallel on these threads (1.4-1.6x faster than one on the disks
# seen), handed over in batches; at most this many bytes are read ahead of their
# writes (or one larger batch).
WRITER_THREADS = 4
WRITE_BATCH_FILES = 32
WRITE_BATCH_BYTES = 512 * 1024
WRITES_AHEAD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ExtractLimits:
    max_members: int
    max_file_bytes: int
    max_total_bytes: int


class UnsafeTarball(SourceUnavailable):
    """The tarball tries something a source never needs; nothing of it is installed."""


def main(argv: list[str]) -> int:
    """``python -m bundler.unpack TARBALL DEST LIMITS_JSON``: one extraction; a refusal
    is printed as JSON ({"unsafe": bool, "message": str}) with exit status 1."""
    tarball, dest, limits = argv
    die_with_parent()
    try:
        records = extract_tarball(Path(tarball), Path(dest), ExtractLimits(**json.loads(limits)))
        write_facts(Path(dest), records, Path(dest).parent / FACTS)
    except SourceUnavailable as exc:
        print(json.dumps({"unsafe": isinstance(exc, UnsafeTarball), "message": exc.message}))
        return 1
    return 0


def _member_path(member: tarfile.TarInfo) -> list[str] | None:
    """The member's path as its parts (strings: pathlib costs a third of a 5,000-file
    extraction), or None for the archive's root; anything unsafe raises."""
    name = member.name
    if name.startswith("/"):
        raise UnsafeTarball(f"tarball member {name!r} has an absolute path")
    if "\x00" in name or "\\" in name:
        raise UnsafeTarball(f"tarball member {name!r} has a forbidden character")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTarball(f"tarball member {name!r} escapes with '..'")
    return parts or None


# A written file: its path parts under the extraction dir, size and SHA-256.
Record = tuple[list[str], int, bytes]


def extract_tarball(tarball: Path, dest: Path, limits: ExtractLimits) -> list[Record]:
    """Stream the tarball, checking every member; files are written by a few threads in
    batches, so parsing the archive (Python) overlaps creating the files (the kernel:
    20-500 us a create on the disks seen, most of a big package's pull)."""
    members = 0
    total = 0
    made: set[str] = set()  # directories created so far, relative
    root = str(dest)
    writes = _Writes()
    try:
        with (
            writes,
            _open_stream(tarball) as stream,
            tarfile.open(fileobj=stream, mode="r|*") as tar,
        ):
            for member in tar:
                members += 1
                if members > limits.max_members:
                    raise UnsafeTarball(f"tarball has more than {limits.max_members} members")
                kind = _kind(member)
                parts = _member_path(member)
                if parts is None:
                    continue
                if kind == "dir":
                    _make_dirs(root, parts, made)
                    continue
                if member.size > limits.max_file_bytes:
                    raise UnsafeTarball(
                        f"tarball member {member.name!r} is larger than {limits.max_file_bytes} bytes"
                    )
                total += member.size
                if total > limits.max_total_bytes:
                    raise UnsafeTarball(
                        f"tarball unpacks to more than {limits.max_total_bytes} bytes"
                    )
                if parts[-1].endswith(SKIPPED_SUFFIXES):
                    continue  # counted against the limits above, never written
                _make_dirs(root, parts[:-1], made)
                writes.add(
                    parts,
                    _read_member(tar, member),
                    os.path.join(root, *parts),
                    executable=bool(member.mode & 0o100),
                )
            _drain(stream)
            return writes.records()
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            # Remembered like any failed pull, and said as what it is.
            raise SourceUnavailable(
                f"the service cannot write its data dir ({exc.strerror}); retry later"
            ) from None
        raise SourceUnavailable(f"the source tarball is corrupt or truncated: {exc}") from None
    except (tarfile.TarError, EOFError, ValueError) as exc:
        # zlib/gzip errors surface as OSError or EOFError; a truncated stream as TarError.
        raise SourceUnavailable(f"the source tarball is corrupt or truncated: {exc}") from None


def write_facts(content: Path, records: list[Record], out: Path) -> None:
    """What the service would otherwise learn by walking and reading the whole version
    again, taken while every byte was in hand: its digest and its module candidates."""
    root = strip_single_top_folder(content)
    strip = len(root.relative_to(content).parts)
    files = [("/".join(parts[strip:]), size, sha) for parts, size, sha in records]
    candidates = candidates_from(((path, size) for path, size, _ in files), read_package_json(root))
    facts = {
        "digest": _walk_order_digest(files),
        "candidates": vars(candidates),  # shallow: asdict deep-copies 6,000 entries
    }
    out.write_text(json.dumps(facts))


def _walk_order_digest(files: list[tuple[str, int, bytes]]) -> str:
    """bundler.digest.source_digest of these files, without reading them again: the
    same order (os.walk with sorted names: a folder's files, then its folders)."""
    tree: dict[str, Any] = {}
    for path, _, sha in files:
        *folders, name = path.split("/")
        node = tree
        for folder in folders:
            node = node.setdefault(folder + "/", {})
        node[name] = sha
    digest = hashlib.sha256()

    def visit(node: dict[str, Any], prefix: str) -> None:
        names = sorted(k for k in node if not k.endswith("/"))
        for name in names:
            digest.update((prefix + name).encode() + b"\0")
            digest.update(node[name])
        # by the folder's name, as os.walk sorts it ("a-b" after "a", "a-b/" before "a/")
        for folder in sorted((k for k in node if k.endswith("/")), key=lambda k: k[:-1]):
            visit(node[folder], prefix + folder)

    visit(tree, "")
    return digest.hexdigest()


@contextlib.contextmanager
def _open_stream(tarball: Path) -> Iterator[IO[bytes]]:
    """gzip through the gzip module, which checks the CRC and length at the end
    (tarfile's own stream reader does not, so a truncated tarball would pass)."""
    with tarball.open("rb") as raw:
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield gz  # type: ignore[misc]
        else:
            raw.seek(0)
            yield raw


def _drain(stream: IO[bytes]) -> None:
    """Read past the archive's end so gzip verifies its trailer; refuse a large tail."""
    tail = 0
    while chunk := stream.read(CHUNK_BYTES):
        tail += len(chunk)
        if tail > MAX_TRAILING_BYTES:
            raise UnsafeTarball("tarball has more than 1 MiB of data after its end")


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        what = "a symlink"
    elif member.islnk():
        what = "a hard link"
    elif member.isfifo():
        what = "a fifo"
    elif member.ischr() or member.isblk():
        what = "a device node"
    else:
        what = "an unsupported member type"
    raise UnsafeTarball(
        f"tarball member {member.name!r} is {what}; only files and directories are allowed"
    )


def _make_dirs(root: str, parts: list[str], made: set[str]) -> None:
    for depth in range(1, len(parts) + 1):
        relative = "/".join(parts[:depth])
        if relative in made:
            continue
        made.add(relative)
        current = os.path.join(root, relative)
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            if os.path.islink(current) or not os.path.isdir(current):
                raise UnsafeTarball(
                    f"tarball path {'/'.join(parts)!r} collides with a file"
                ) from None


class _Writes:
    """Member files handed to writer threads in batches (few GIL hand-offs), with at
    most WRITES_AHEAD_BYTES read but not written yet. As a context manager: on an
    error, the batches not started yet are dropped."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="extract")
        self._batch: list[tuple[bytes, str, bool]] = []
        self._batch_bytes = 0
        self._done: list[tuple[list[tuple[list[str], int]], Future[list[bytes]]]] = []
        self._meta: list[tuple[list[str], int]] = []
        self._ahead = 0
        self._changed = threading.Condition()

    def __enter__(self) -> _Writes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=exc_info[0] is not None)

    def add(self, parts: list[str], data: bytes, target: str, *, executable: bool) -> None:
        self._batch.append((data, target, executable))
        self._meta.append((parts, len(data)))
        self._batch_bytes += len(data)
        if len(self._batch) >= WRITE_BATCH_FILES or self._batch_bytes >= WRITE_BATCH_BYTES:
            self._flush()

    def records(self) -> list[Record]:
        """Every file's record, in archive order; the first failed write raises."""
        self._flush()
        return [
            (parts, size, digest)
            for meta, future in self._done
            for (parts, size), digest in zip(meta, future.result(), strict=True)
        ]

    def _flush(self) -> None:
        if not self._batch:
            return
        size = self._batch_bytes
        with self._changed:
            self._changed.wait_for(
                lambda: self._ahead == 0 or self._ahead + size <= WRITES_AHEAD_BYTES
            )
            self._ahead += size
        future = self._pool.submit(_write_files, self._batch)
        future.add_done_callback(lambda _: self._written(size))
        self._done.append((self._meta, future))
        self._batch, self._meta, self._batch_bytes = [], [], 0

    def _written(self, size: int) -> None:
        with self._changed:
            self._ahead -= size
            self._changed.notify()


def _write_files(batch: list[tuple[bytes, str, bool]]) -> list[bytes]:
    return [_write_file(data, target, executable=executable) for data, target, executable in batch]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The member's bytes (at most max_file_bytes: checked on its header before)."""
    source = tar.extractfile(member)
    if source is None:
        raise UnsafeTarball(f"tarball member {member.name!r} has no data")
    data = source.read(member.size + 1)
    if len(data) > member.size:  # never trust the header alone
        raise UnsafeTarball(f"tarball member {member.name!r} is longer than it says")
    if len(data) != member.size:
        raise SourceUnavailable(f"tarball member {member.name!r} is truncated")
    return data


def _write_file(data: bytes, target: str, *, executable: bool) -> bytes:
    """Writes one member (in a writer thread); returns its SHA-256 (the version's digest
    is made from these)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o755 if executable else 0o644)
    except FileExistsError:
        raise UnsafeTarball(f"tarball has {os.path.basename(target)!r} twice") from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return hashlib.sha256(data).digest()


def strip_single_top_folder(content: Path) -> Path:
    """npm tarballs keep everything under one folder ("package/"): that folder is the root."""
    entries = list(content.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return content


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
