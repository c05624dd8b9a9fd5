"""The HTTP server's connections: a deadline for each phase, a cap, and aiohttp's own
answers in the service's form.

aiohttp bounds none of these by itself: a request's headers may trickle in for as long
as the client likes (slowloris), a response the client does not read is written for
ever, and every connection costs a file descriptor until the process runs out of them,
when accept() fails and the liveness probe with it: the pod is restarted and its memory
cache lost, the incident this service exists to prevent, triggered by one client.

- headers: complete within ``header_timeout_s`` of the request's first byte;
- body: the handlers that read one bound it (bundler.app); a body nobody reads is
  discarded for at most LINGER_S, then the connection closes;
- idle: a keep-alive connection closes after ``keepalive_timeout_s`` without a request
  (aiohttp's own timer, also from a new connection's start);
- response: written within ``write_timeout_s`` plus its size at ``write_min_bytes_per_s``,
  else the connection is abandoned (reset);
- count: past ``max_connections`` the oldest connection with no request in progress is
  closed to make room (a probe always gets in), else the new one is refused at once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from bundler.errors import one_line
from bundler.settings import Settings

logger = logging.getLogger(__name__)

# A body the handler did not read is read and discarded this long (so the connection
# can be reused), then the connection closes: browsers send none with a GET.
LINGER_S = 1.0
# The listen backlog. asyncio accepts up to this many connections in one go before any of
# them is counted (each is set up in a task of its own), and a connection closed to make
# room gives its descriptor back only on the next loop iteration: the cap keeps twice
# this many descriptors back, so that accept() never runs out of them (it then stops
# accepting for a second, and the probes fail).
LISTEN_BACKLOG = 128
# ...and this many more: esbuild's pipes, the disk tier's and the pulls' files, Redis,
# the extraction child.
FD_RESERVE_OTHER = 64
MIN_CONNECTIONS = 16


def raw_answer(status: str, text: str, extra: str = "") -> bytes:
    """A whole one-line answer written straight to a connection that has no request object
    (it is being closed): the service's form, never cached."""
    body = (text + "\n").encode()
    return (
        f"HTTP/1.1 {status}\r\nConnection: close\r\n{extra}Cache-Control: no-store\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


REFUSED = raw_answer(
    "503 Service Unavailable", "too many connections; retry in a moment", "Retry-After: 1\r\n"
)
HEADERS_TIMED_OUT = raw_answer(
    "408 Request Timeout", "the request's headers did not arrive in time"
)


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    keepalive_timeout_s: float
    write_timeout_s: float
    write_min_bytes_per_s: int
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            header_timeout_s=settings.header_timeout_s,
            keepalive_timeout_s=settings.keepalive_timeout_s,
            write_timeout_s=settings.write_timeout_s,
            write_min_bytes_per_s=settings.write_min_bytes_per_s,
            max_connections=settings.max_connections or connection_cap(raise_fd_limit()),
        )

    def write_deadline_s(self, body_bytes: int) -> float:
        return self.write_timeout_s + body_bytes / self.write_min_bytes_per_s


def raise_fd_limit() -> int:
    """The soft limit on open files raised to the hard one (as Go's runtime does): the
    default soft limit (1024 on many systems) is far below what a server may hold."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(fd_limit: int) -> int:
    return max(MIN_CONNECTIONS, fd_limit - 2 * LISTEN_BACKLOG - FD_RESERVE_OTHER)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The service's answer to anything wrong: one line of text, never cached."""
    return web.Response(
        status=status,
        text=message + "\n",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


class ConnectionStats:
    """Counts for /metrics; lives in the app (create_app), filled by the server."""

    def __init__(self) -> None:
        self.open = 0
        self.closed: collections.Counter[str] = collections.Counter()

    def metric_values(self) -> dict[str, float | dict[str, float]]:
        return {
            "bundler_connections_open": float(self.open),
            "bundler_connections_cut": dict(self.closed),
        }


def too_long_status(exc: LineTooLong) -> int:
    """414 for a request line (or target) too long, 431 for a header (RFC 9110, 6585).
    aiohttp's parsers say which only by what they quote: the target ("/...", or the
    whole request line), or a header's value."""
    quoted = exc.args[0] if exc.args else b""
    is_bytes = isinstance(quoted, bytes | bytearray)
    text = bytes(quoted).decode("latin-1") if is_bytes else str(quoted)
    first = text.split(" ", 1)[0]
    is_target = text.startswith("/") or "://" in first or (first.isupper() and " /" in text)
    return 414 if is_target else 431


class Connection(RequestHandler):
    """One client connection: aiohttp's handler with the deadlines above, and a parse
    error answered in one line, never cached, logged once (clients send junk all day)."""

    __slots__ = ("cut", "header_timer", "in_request", "server")

    def __init__(self, server: ConnectionServer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self.server = server
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_request = False
        self.cut = False  # closed by the server to make room

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self.server.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and not self.in_request and self.header_timer is None:
            self.header_timer = asyncio.get_running_loop().call_later(
                self.server.limits.header_timeout_s, self._headers_too_slow
            )
        super().data_received(data)

    def request_began(self) -> None:
        """Called as the request is made: its headers are all in."""
        self._stop_header_timer()
        self.in_request = True
        self.server.busy(self)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        self.server.stats.closed["header_timeout"] += 1
        if self.transport is not None:
            self.transport.write(HEADERS_TIMED_OUT)
        self.force_close()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        deadline_s = self.server.limits.write_deadline_s(resp.content_length or 0)
        try:
            async with asyncio.timeout(deadline_s):
                return await super().finish_response(request, resp, start_time)
        except TimeoutError:
            # The client does not read: its response is abandoned, and the connection
            # reset so that the kernel drops what it still holds for it.
            self.server.stats.closed["write_timeout"] += 1
            if self.transport is not None:
                self.transport.abort()
            self.force_close()
            self.log_access(request, resp, start_time)
            return resp, True
        finally:
            self.in_request = False
            self.server.idle(self)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            status = too_long_status(exc)
        problem = one_line(message or HTTPStatus(status).phrase, 200)
        logger.warning(
            "refused a malformed HTTP request",
            extra={"status": status, "remote": request.remote, "problem": problem},
        )
        response = error_response(status, f"bad HTTP request: {problem}")
        response.force_close()
        return response


class ConnectionServer(web.Server):
    """aiohttp's server for the app, making Connections and keeping their count."""

    __slots__ = ()
    limits: Limits
    stats: ConnectionStats
    live: set[Connection]
    idle_order: collections.OrderedDict[Connection, None]
    closing: int

    def adopt(self, limits: Limits, stats: ConnectionStats) -> None:
        self.limits = limits
        self.stats = stats
        self.live = set()
        self.idle_order = collections.OrderedDict()  # no request in progress, oldest first
        self.closing = 0  # closed by us, their descriptors not given back yet
        made = self.request_factory

        def make_request(message: Any, payload: Any, protocol: Any, *args: Any) -> BaseRequest:
            if isinstance(protocol, Connection):
                protocol.request_began()
            return made(message, payload, protocol, *args)

        self.request_factory = make_request

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=self._loop, **self._kwargs)

    def opened(self, conn: Connection) -> None:
        self.live.add(conn)
        self.stats.open = len(self.live)
        self.idle_order[conn] = None
        if len(self.live) - self.closing <= self.limits.max_connections:
            return
        # A probe must get in: the connection idle longest makes room. It is taken off
        # the list now; its descriptor comes back on the next loop iteration.
        oldest = next(iter(self.idle_order))
        if oldest is not conn:
            del self.idle_order[oldest]
            self.stats.closed["evicted"] += 1
            self.closing += 1
            oldest.cut = True
            oldest.force_close()
            return
        del self.idle_order[conn]
        self.stats.closed["refused"] += 1
        self.closing += 1
        conn.cut = True
        if conn.transport is not None:
            conn.transport.write(REFUSED)
        conn.force_close()

    def closed(self, conn: Connection) -> None:
        if conn in self.live:
            self.live.discard(conn)
            self.idle_order.pop(conn, None)
            self.stats.open = len(self.live)
            if conn.cut:
                self.closing -= 1

    def busy(self, conn: Connection) -> None:
        self.idle_order.pop(conn, None)

    def idle(self, conn: Connection) -> None:
        if conn.transport is not None and conn in self.live:
            self.idle_order[conn] = None


class ConnectionRunner(web.AppRunner):
    """The app's runner with ConnectionServer as its server and the deadlines given."""

    __slots__ = ("limits", "stats")

    def __init__(
        self, app: web.Application, limits: Limits, stats: ConnectionStats, **kwargs: Any
    ) -> None:
        super().__init__(
            app,
            keepalive_timeout=limits.keepalive_timeout_s,
            lingering_time=LINGER_S,
            **kwargs,
        )
        self.limits = limits
        self.stats = stats

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = ConnectionServer  # the app's own server, its handlers ours
        assert isinstance(server, ConnectionServer)
        server.adopt(self.limits, self.stats)
        return server
