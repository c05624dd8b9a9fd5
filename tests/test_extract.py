"""Safe extraction: malicious tarballs are rejected with nothing written outside the work dir."""

from __future__ import annotations

import asyncio
import tarfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler import extract
from bundler.errors import SourceUnavailable
from tests.tarballs import LIB_FILES, add_member, gzip_bomb, make_tarball

LIMITS = extract.ExtractLimits(max_members=100, max_file_bytes=1_000_000, max_total_bytes=2_000_000)


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    return tmp_path / "data" / "sources"


def install(
    sources: Path, data: bytes, version: str = "1.0.0", limits: extract.ExtractLimits = LIMITS
) -> Path:
    tarball = sources.parent / f"upload-{version}-{uuid.uuid4().hex}.tgz"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tarball.write_bytes(data)
    work = extract.WorkDir(sources, version)
    try:
        return work.install(tarball, limits)
    finally:
        work.remove()


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def malicious_cases(outside: Path) -> dict[str, tuple[Callable[[], bytes], str]]:
    """Each case's tarball is built only when asked for (the bomb takes a moment)."""
    return {
        "absolute path": (
            lambda: make_tarball({}, extra=lambda t: add_member(t, str(outside / "abs.js"))),
            "has an absolute path",
        ),
        "dot-dot": (
            lambda: make_tarball({}, extra=lambda t: add_member(t, "../../outside/up.js")),
            "escapes with '..'",
        ),
        "symlink then write through it": (
            lambda: make_tarball(
                {},
                extra=lambda t: (
                    add_member(t, "package/link", type=tarfile.SYMTYPE, linkname=str(outside)),
                    add_member(t, "package/link/through.js"),
                ),
            ),
            "is a symlink",
        ),
        "hard link": (
            lambda: make_tarball(
                {"a.js": b"x"},
                extra=lambda t: add_member(
                    t, "package/hl", type=tarfile.LNKTYPE, linkname="/etc/passwd"
                ),
            ),
            "is a hard link",
        ),
        "device node": (
            lambda: make_tarball(
                {},
                extra=lambda t: add_member(
                    t, "package/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3
                ),
            ),
            "is a device node",
        ),
        "fifo": (
            lambda: make_tarball(
                {}, extra=lambda t: add_member(t, "package/pipe", type=tarfile.FIFOTYPE)
            ),
            "is a fifo",
        ),
        "gzip bomb": (lambda: gzip_bomb(300 * 1024 * 1024), "larger than 1000000 bytes"),
        "too many members": (
            lambda: make_tarball({f"m{i}.js": b"x" for i in range(101)}),
            "more than 100 members",
        ),
        "total too large": (
            lambda: make_tarball({f"m{i}.js": bytes(900_000) for i in range(3)}),
            "unpacks to more than 2000000 bytes",
        ),
        "same file twice": (
            lambda: make_tarball(
                {"a.js": b"1"}, extra=lambda t: add_member(t, "package/a.js", b"2")
            ),
            "twice",
        ),
        "truncated gzip": (lambda: make_tarball(LIB_FILES)[:300], "corrupt or truncated"),
    }


CASES = list(malicious_cases(Path("/unused")))


def malicious(tmp_path: Path, case: str) -> tuple[bytes, str]:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    build, message = malicious_cases(outside)[case]
    return build(), message


@pytest.mark.parametrize("case", CASES)
def test_malicious_tarball_is_rejected(case: str, tmp_path: Path, sources: Path) -> None:
    data, message = malicious(tmp_path, case)
    with pytest.raises(SourceUnavailable, match=message.replace("(", r"\(")):
        install(sources, data)
    assert list((tmp_path / "outside").iterdir()) == []
    assert snapshot(sources) == {".lock"} or snapshot(sources) == set()
    assert extract.installed_root(sources, "1.0.0") is None


def test_control_naive_extractall_writes_outside(tmp_path: Path) -> None:
    """What the checks prevent: tarfile with no filter follows '..' and the symlink."""
    for i, case in enumerate(("dot-dot", "symlink then write through it")):
        data, _ = malicious(tmp_path, case)
        dest = tmp_path / f"naive-{i}" / "dest"  # "../../outside" from here is tmp_path/outside
        dest.mkdir(parents=True)
        path = tmp_path / f"{case}.tgz"
        path.write_bytes(data)
        with tarfile.open(path) as tar:
            tar.extractall(dest, filter="fully_trusted")
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["through.js", "up.js"]


def test_gzip_bomb_is_stopped_early(tmp_path: Path, sources: Path) -> None:
    data, _ = malicious(tmp_path, "gzip bomb")
    assert len(data) < 1_000_000  # 300 MiB of zeros, compressed
    with pytest.raises(SourceUnavailable):
        install(sources, data)
    assert not any(sources.rglob("zeros.js"))


def test_npm_top_folder_is_stripped_and_installed_atomically(sources: Path) -> None:
    root = install(sources, make_tarball(LIB_FILES))
    assert root == sources / "1.0.0" / extract.SRC
    assert (root / "index.js").read_bytes() == LIB_FILES["index.js"]
    assert (root / "node_modules" / "shouty" / "main.js").exists()
    assert extract.installed_root(sources, "1.0.0") == root
    assert sorted(p.name for p in sources.iterdir()) == [".lock", "1.0.0"]


def test_flat_tarball_is_used_as_is(sources: Path) -> None:
    root = install(sources, make_tarball(LIB_FILES, prefix=""))
    assert (root / "math" / "add.js").exists()


def test_two_installers_of_one_version_agree(sources: Path) -> None:
    data = make_tarball(LIB_FILES)
    roots: list[Path] = []
    threads = [
        threading.Thread(target=lambda: roots.append(install(sources, data))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(roots)) == 1
    assert sorted(p.name for p in sources.iterdir()) == [".lock", "1.0.0"]


def test_clean_stale_removes_dead_work_but_not_live_work(sources: Path) -> None:
    live = extract.WorkDir(sources, "1.0.0")
    dead = extract.WorkDir(sources, "2.0.0")
    dead.unlock()  # its owner "died": the lock is released, the dir stays
    (sources / f"{extract.TRASH_PREFIX}3.0.0-1").mkdir()
    try:
        removed = extract.clean_stale(sources)
        assert sorted(removed) == sorted([dead.path.name, f"{extract.TRASH_PREFIX}3.0.0-1"])
        assert live.path.exists() and not dead.path.exists()
    finally:
        live.remove()


@pytest.mark.parametrize("in_child", [False, True])
def test_the_extraction_records_the_digest_and_candidates_a_walk_would_find(
    sources: Path, in_child: bool
) -> None:
    """The service reads these instead of walking and hashing the version again: they
    must be exactly what the walk finds (a wrong digest would rebuild every fallback)."""
    from bundler.digest import source_digest, version_digest
    from bundler.fallback.build import version_candidates
    from bundler.fallback.candidates import list_candidates
    from tests.packages import npm_tarball

    for data, version in (
        (make_tarball({**LIB_FILES, "types.d.ts": b"export type T = 1;\n"}), "1.0.0"),
        (npm_tarball("date-fns", "4.1.0"), "4.1.0"),
    ):
        limits = extract.ExtractLimits(20_000, 20_000_000, 200_000_000)
        if in_child:
            tarball = sources.parent / f"child-{version}.tgz"
            tarball.parent.mkdir(parents=True, exist_ok=True)
            tarball.write_bytes(data)
            work = extract.WorkDir(sources, version)
            try:
                root = asyncio.run(work.install_async(tarball, limits, 60))
            finally:
                work.remove()
        else:
            root = install(sources, data, version, limits)
        assert extract.read_facts(root) is not None
        assert version_digest(root) == source_digest(root)
        assert version_candidates(root) == list_candidates(root)
        assert not list(root.rglob("*.d.ts"))  # never written
