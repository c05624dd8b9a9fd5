"""No connection lives for ever: real sockets against a real `bundler serve` process.

Each attack is run against the deadline under test (set short, so the test is quick)
and, as the naive control, against a deadline as long as aiohttp's defaults, which
the service used before: the same check then fails.
"""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, ROOT, free_port

pytestmark = pytest.mark.slow

# As long as aiohttp's own defaults (a keep-alive of 3630 s, nothing else bounded).
FOREVER = "3600"


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.sockets: list[socket.socket] = []  # the test's clients, closed at the end

    def connect(self, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        self.sockets.append(sock)
        if rcvbuf is not None:  # set before connecting: it bounds the window offered
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def get(self, path: str, timeout_s: float = 2.0) -> int:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status)


@contextlib.contextmanager
def serve(tmp_path: Path, *flags: str, fd_limit: int | None = None) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"

    def limit_fds() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bundler", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--drain-s", "0", "--access-log", "off",
             *flags],
            cwd=ROOT, stderr=out, preexec_fn=limit_fds,
        )  # fmt: skip
    server = Server(port, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if server.get("/readyz") == 200:
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.05)
        yield server
    finally:
        for sock in server.sockets:
            sock.close()
        proc.kill()
        proc.wait(timeout=10)


def closed_by_server(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the server closed (or reset) the connection, reading what it sent;
    None if it was still open after ``within_s``."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < within_s:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset
            return time.monotonic() - started
    return None


def closed_now(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (an EOF or a reset is waiting)."""
    sock.settimeout(0)  # a poll, no wait
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or closed_now(sock)  # a 408 first, then the EOF


def open_count(server: Server) -> int:
    """The server's sockets, from /proc (what the server holds, not what the client sees)."""
    fds = Path(f"/proc/{server.proc.pid}/fd")
    return sum(1 for fd in fds.iterdir() if "socket:" in str(fd.readlink()))


@pytest.mark.parametrize("header_timeout", ["2", FOREVER])
def test_slowloris_is_closed_within_the_header_deadline(
    tmp_path: Path, header_timeout: str
) -> None:
    """20 connections send a request line, then a header byte a second."""
    with serve(tmp_path, "--header-timeout-s", header_timeout) as server:
        socks = [server.connect() for _ in range(20)]
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        open_socks = list(socks)
        last_closed = 0.0
        while open_socks and time.monotonic() - started < 4.5:
            for sock in list(open_socks):
                try:
                    sock.sendall(b"X")
                    if closed_now(sock):
                        raise ConnectionResetError
                except OSError:
                    open_socks.remove(sock)
                    last_closed = time.monotonic() - started
            time.sleep(0.25)
        if header_timeout == FOREVER:
            assert len(open_socks) == 20  # naive: all still open
            return
        assert open_socks == []
        print(f"slowloris: 20 closed {last_closed:.1f} s after their first byte")


@pytest.mark.parametrize("keepalive", ["2", FOREVER])
def test_an_idle_keepalive_flood_is_closed_within_the_keepalive_timeout(
    tmp_path: Path, keepalive: str
) -> None:
    """200 connections make one request each, then say nothing."""
    with serve(tmp_path, "--keepalive-timeout-s", keepalive) as server:
        socks = [server.connect() for _ in range(200)]
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in socks:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        before = open_count(server)
        started = time.monotonic()
        deadline = started + 4.0
        while open_count(server) > before - 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        held = open_count(server) - (before - 200)
        if keepalive == FOREVER:
            assert held == 200  # naive: every one still held
            return
        assert held == 0, held
        print(f"idle keep-alive: 200 closed {time.monotonic() - started:.1f} s after their answer")


@pytest.mark.parametrize("body_timeout", ["2", FOREVER])
def test_a_body_shorter_than_announced_gets_a_408_within_the_body_deadline(
    tmp_path: Path, body_timeout: str
) -> None:
    with serve(tmp_path, "--body-timeout-s", body_timeout) as server:
        sock = server.connect()
        sock.sendall(
            b"POST /warm HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"version":'
        )
        sock.settimeout(4)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b""
        if body_timeout == FOREVER:
            assert answer == b""  # naive: no answer, the connection held
            return
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"did not arrive within 2 s" in answer and b"no-store" in answer
        assert closed_by_server(sock, 3) is not None


@pytest.fixture
def big_module(tmp_path: Path) -> Path:
    """A version holding an 8 MB module: its bundle is more than the kernel's buffers
    on both sides hold (4 MiB here), so a client that does not read holds the write."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
    blob = "".join(f"{i:08x}" for i in range(1_000_000))  # 8 MB, incompressible enough
    (source / "1.1.0" / "big.js").write_text(f'export const blob = "{blob}";\n')
    return source


@pytest.mark.parametrize("write_timeout", ["2", FOREVER])
def test_a_response_the_client_does_not_read_is_abandoned(
    tmp_path: Path, big_module: Path, write_timeout: str
) -> None:
    with serve(
        tmp_path, "--source", str(big_module), "--fallback-budget-ms", "-1",
        "--write-timeout-s", write_timeout, "--write-min-bytes-per-s", "100000000",
    ) as server:  # fmt: skip
        request = (
            b"GET /bundle.js?modules=big HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n"
        )
        warm = server.connect()  # built and cached first: the deadline is the write's
        warm.sendall(request)
        warm.settimeout(30)
        assert warm.recv(4096).startswith(b"HTTP/1.1 200")
        warm.close()
        slow = server.connect(rcvbuf=4096)
        slow.sendall(request)
        time.sleep(0.5)
        before = open_count(server)
        deadline = time.monotonic() + 5
        while open_count(server) >= before and time.monotonic() < deadline:
            time.sleep(0.1)
        abandoned = open_count(server) < before
        assert abandoned == (write_timeout != FOREVER)
        slow.close()


@pytest.mark.parametrize("cap", ["derived", "naive"])
def test_probes_stay_green_with_600_half_open_connections_at_512_fds(
    tmp_path: Path, cap: str
) -> None:
    """The fd limit at 512, 600 connections that never finish their headers (a long
    header deadline, so only the cap is at work). Naive (no cap): accept() runs out of
    file descriptors, and the probes with it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    flags = ["--header-timeout-s", "600"]
    if cap == "naive":
        flags += ["--max-connections", "100000"]
    with serve(tmp_path, *flags, fd_limit=512) as server:
        hostile = server.sockets
        for _ in range(600):
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", server.port))
            hostile.append(sock)
        # A connect whose SYN met a full backlog is retried by the kernel a second or
        # more later: wait until they have all arrived, or the probes could slip in first.
        wait_connected(hostile, deadline_s=15.0)
        for sock in hostile:
            with contextlib.suppress(OSError):
                sock.send(b"GET /healthz HTTP/1.1\r\n")
        failures = 0
        for _ in range(10):
            for path in ("/healthz", "/readyz"):
                try:
                    assert server.get(path, timeout_s=2.0) == 200
                except (OSError, AssertionError):
                    failures += 1
            if failures >= 2:  # the naive control has shown what it shows
                break
            time.sleep(0.2)
    if cap == "naive":
        assert failures > 0
        return
    assert failures == 0, server.log.read_text()[-2000:]


def wait_connected(socks: list[socket.socket], deadline_s: float) -> None:
    """Until every non-blocking connect has completed (or the deadline)."""
    pending = selectors.DefaultSelector()
    for sock in socks:
        pending.register(sock, selectors.EVENT_WRITE)
    end = time.monotonic() + deadline_s
    while pending.get_map() and time.monotonic() < end:
        for key, _ in pending.select(timeout=0.5):
            pending.unregister(key.fileobj)
    pending.close()


def answer(server: Server, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``raw`` as is; the status, headers and body of the (last) answer."""
    sock = server.connect()
    sock.sendall(raw)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 100"):
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: (\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
    if data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
        data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def test_what_aiohttp_answers_itself_is_one_line_never_cached_never_a_5xx(
    tmp_path: Path,
) -> None:
    """An Expect that is not UTF-8 was a 500 with a traceback; others echoed the value;
    CONNECT was a 404; oversized headers a 400."""
    cases = [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: \xff\r\n\r\n", 417),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n", 417),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    ]
    with serve(tmp_path) as server:
        for raw, status in cases:
            got, headers, body = answer(server, raw)
            assert got == status, (raw[:60], got, body)
            assert headers.get("Cache-Control") == "no-store", headers
            assert body.endswith(b"\n") and body.count(b"\n") == 1, body
            assert b"teapot" not in body and b"\xff" not in body
        assert headers.get("Allow") is None  # (414: no Allow)
        got, headers, _ = answer(server, cases[2][0])
        assert headers["Allow"] == "GET, HEAD, POST"
        # Expect: 100-continue is still honoured.
        got, _, body = answer(
            server,
            b"POST /warm HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
            b"Content-Type: application/json\r\n\r\n{}",
        )
        assert got == 400 and b"send JSON like" in body
        # A GET announcing a body it never sends: answered, then closed within a second.
        sock = server.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        seconds = closed_by_server(sock, 3)
        assert seconds is not None and seconds < 2, seconds
    log = server.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-2000:]
