"""How long each kind of hostile connection lives, against the default deadlines.

One `bundler serve` process with its defaults (only the fd limit lowered for the last
row), and raw sockets from this process: slowloris (a request line, then a header byte
a second), idle keep-alive connections, a body shorter than announced, a client that
does not read an 8 MB answer, and 600 connections that never finish their headers
while the probes are polled. Prints one table: each attack, its deadline, the time
the server took to close it (median and max over the connections).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "components"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(data: Path, *flags: str, fd_limit: int | None = None) -> Iterator[tuple[int, int]]:
    port = free_port()

    def limit() -> None:
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "bundler", "serve", "--port", str(port), "--data-dir",
         str(data), "--drain-s", "0", "--access-log", "off", *flags],
        cwd=ROOT, stderr=subprocess.DEVNULL, preexec_fn=limit,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait()


def closed(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or closed(sock)


def until_closed(
    socks: list[socket.socket], limit_s: float, tick: Callable[[socket.socket], None]
) -> list[float]:
    started = time.monotonic()
    times: dict[int, float] = {}
    while len(times) < len(socks) and time.monotonic() - started < limit_s:
        for i, sock in enumerate(socks):
            if i in times:
                continue
            try:
                tick(sock)
                if closed(sock):
                    raise ConnectionResetError
            except OSError:
                times[i] = time.monotonic() - started
        time.sleep(0.1)
    return [times.get(i, float("inf")) for i in range(len(socks))]


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def sockets(pid: int) -> int:
    """The server's open sockets (its side of the connections)."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if "socket:" in str(fd.readlink()))


def row(label: str, deadline: str, times: list[float]) -> None:
    finite = [t for t in times if t != float("inf")]
    held = len(times) - len(finite)
    median = f"{statistics.median(finite):.1f}" if finite else "-"
    worst = f"{max(finite):.1f}" if finite else "-"
    print(f"{label:44}{deadline:>22}{median:>10}{worst:>9}{held:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--idle", type=int, default=200, help="idle keep-alive connections")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        source = Path(work) / "src"
        shutil.copytree(EXAMPLES / "1.1.0", source / "1.1.0")
        blob = "".join(f"{i:08x}" for i in range(125_000))  # 1 MB
        (source / "1.1.0" / "big.js").write_text(f'export const blob = "{blob}";\n')
        print(f"{'attack':44}{'deadline (default)':>22}{'median s':>10}{'max s':>9}{'held':>7}")
        with serve(data, "--source", str(source), "--fallback-budget-ms", "-1") as (port, pid):
            loris = [connect(port) for _ in range(20)]
            for sock in loris:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            last: dict[int, float] = {}

            def trickle(sock: socket.socket) -> None:
                if time.monotonic() - last.get(id(sock), 0) >= 1:
                    sock.sendall(b"X")
                    last[id(sock)] = time.monotonic()

            row(
                "slowloris, 20 (a header byte a second)",
                "headers 10 s",
                until_closed(loris, 30, trickle),
            )
            idle = [connect(port) for _ in range(args.idle)]
            for sock in idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.recv(4096)
            row(
                f"idle keep-alive, {args.idle} (after one request)",
                "idle 75 s",
                until_closed(idle, 100, lambda s: None),
            )
            short = connect(port)
            short.sendall(b"POST /warm HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}")
            row(
                "POST /warm, 10 of 100 bytes sent",
                "body 10 s",
                until_closed([short], 30, lambda s: None),
            )
            request = b"GET /bundle.js?modules=big HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n"
            warm = connect(port)
            warm.sendall(request)
            warm.settimeout(60)
            warm.recv(4096)
            warm.close()
            slow = connect(port, rcvbuf=4096)
            before = sockets(pid)
            slow.sendall(request)
            started = time.monotonic()
            next_read = started
            while sockets(pid) >= before and time.monotonic() - started < 300:
                if time.monotonic() >= next_read:  # 1 KB a second
                    slow.settimeout(0.5)
                    with contextlib.suppress(OSError):
                        slow.recv(1024)
                    next_read += 1
                time.sleep(0.05)
            row(
                "1 MB answer read at 1 KB/s",
                "answer ~143 s, idle 75 s",
                [time.monotonic() - started],
            )
            for sock in loris + idle + [short, slow]:
                sock.close()
        with serve(data, fd_limit=512) as (port, _):
            hostile = []
            for _ in range(600):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                hostile.append(sock)
            time.sleep(1)
            for sock in hostile:
                with contextlib.suppress(OSError):
                    sock.send(b"GET / HTTP/1.1\r\n")
            answered, slowest = 0, 0.0
            for _ in range(20):
                for path in ("/healthz", "/readyz"):
                    started = time.monotonic()
                    url = f"http://127.0.0.1:{port}{path}"
                    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2):
                        answered += 1
                    slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.25)
            for sock in hostile:
                sock.close()
            print(f"\nfd limit 512, 600 half-open connections: probes answered {answered} of 40, "
                  f"slowest {slowest * 1000:.0f} ms (cap {512 - 320})")  # fmt: skip


if __name__ == "__main__":
    main()
