"""One long-lived esbuild, spoken to over its service protocol.

esbuild's own JavaScript API is a thin client of a process started as
``esbuild --service=VERSION``: requests and responses go as length-prefixed
packets over its stdin and stdout, and a build request carries the command
line's flags as they are. Keeping one such process instead of starting the CLI
per build saves the process start and the Go runtime's warm-up on every build
(most of a small bundle's build time; docs/architecture.md has the numbers), and a
build needs no output files: esbuild hands the bundle, its map, its CSS and the
metafile back in the response (``write: false``).

The protocol is esbuild's internal one, tied to the binary's version: the
process refuses a host that names another version, and the first packet it
sends is its own version, which is checked. The encoding mirrors
``encodePacket``/``decodePacket`` in esbuild's lib/shared/stdio_protocol.ts.

Several builds may be in flight on one process (esbuild runs them in parallel);
each has its id. When the process dies, every build in flight on it fails with
:class:`ServiceGone`, saying whether it was killed on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# How much of esbuild's stderr is kept (a Go panic's trace, for the log).
STDERR_TAIL_CHARS = 4000
# How long an ended esbuild's stderr is read on for.
STDERR_WAIT_S = 1.0

# Answers larger than this are decoded in a worker thread (their bytes are copied).
LARGE_PACKET_BYTES = 256 * 1024

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class ServiceGone(Exception):
    """The esbuild process ended while a request was in flight (or before it started)."""

    def __init__(self, returncode: int | None, stderr: str, killed: bool) -> None:
        super().__init__(f"esbuild exited with status {returncode}")
        self.returncode = returncode
        self.stderr = stderr
        self.killed = killed  # on purpose: another build's deadline, or the shutdown


def encode(value: Any, out: list[bytes]) -> None:
    """One value in the protocol's encoding, appended to ``out``."""
    if value is None:
        out.append(b"\x00")
    elif value is True or value is False:
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, int):
        out.append(b"\x02" + _I32.pack(value))
    elif isinstance(value, str):
        raw = value.encode()
        out.append(b"\x03" + _U32.pack(len(raw)) + raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.append(b"\x04" + _U32.pack(len(value)) + bytes(value))
    elif isinstance(value, (list, tuple)):
        out.append(b"\x05" + _U32.pack(len(value)))
        for item in value:
            encode(item, out)
    elif isinstance(value, dict):
        out.append(b"\x06" + _U32.pack(len(value)))
        for key, item in value.items():
            raw = key.encode()
            out.append(_U32.pack(len(raw)) + raw)
            encode(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} for esbuild")


def packet(request_id: int, is_request: bool, value: Any) -> bytes:
    parts = [_U32.pack(request_id << 1 | (0 if is_request else 1))]
    encode(value, parts)
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def decode(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """The value at ``pos`` and the position after it."""
    kind = buf[pos]
    pos += 1
    if kind == 0:
        return None, pos
    if kind == 1:
        return buf[pos] != 0, pos + 1
    if kind == 2:
        return _I32.unpack_from(buf, pos)[0], pos + 4
    if kind in (3, 4):
        (size,) = _U32.unpack_from(buf, pos)
        pos += 4
        raw = buf[pos : pos + size]
        return (raw.decode() if kind == 3 else raw), pos + size
    if kind == 5:
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        items = []
        for _ in range(count):
            item, pos = decode(buf, pos)
            items.append(item)
        return items, pos
    if kind == 6:
        (count,) = _U32.unpack_from(buf, pos)
        pos += 4
        fields = {}
        for _ in range(count):
            (size,) = _U32.unpack_from(buf, pos)
            key = buf[pos + 4 : pos + 4 + size].decode()
            fields[key], pos = decode(buf, pos + 4 + size)
        return fields, pos
    raise ValueError(f"esbuild sent a value of unknown kind {kind}")


class EsbuildService:
    """One ``esbuild --service`` process. Start it with :meth:`start`; send requests with
    :meth:`request`. It stops by itself after ``idle_s`` without a request."""

    def __init__(
        self,
        esbuild: str,
        version: str,
        env: dict[str, str],
        *,
        idle_s: float,
        on_start: Callable[[int], None] = lambda pid: None,
    ) -> None:
        self.esbuild = esbuild
        self.version = version
        self.env = env
        self.idle_s = idle_s
        self.on_start = on_start
        self.proc: asyncio.subprocess.Process | None = None
        self.in_flight = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._stderr: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._killed = False
        self._gone: ServiceGone | None = None
        self._idle: asyncio.TimerHandle | None = None

    @property
    def alive(self) -> bool:
        """Started, and neither ended nor asked to end."""
        return self.proc is not None and self._gone is None and not self._killed

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.esbuild,
            f"--service={self.version}",
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group, killed whole
        )
        self.on_start(self.proc.pid)
        self._stderr_task = asyncio.create_task(self._read_stderr(), name="esbuild-stderr")
        self._tasks.append(self._stderr_task)
        try:
            reader = self.proc.stdout
            assert reader is not None
            try:
                (size,) = _U32.unpack(await reader.readexactly(4))
                version = (await reader.readexactly(size)).decode("utf-8", "replace")
            except asyncio.IncompleteReadError:
                raise await self._ended() from None
            if version != self.version:
                raise RuntimeError(f"esbuild answered as version {version}, not {self.version}")
            # Again once it has answered: a thread the Go runtime was starting while the
            # first call went through kept the service's own priority (seen under load).
            self.on_start(self.proc.pid)
        except BaseException:
            self.kill()
            raise
        self._tasks.append(asyncio.create_task(self._read_packets(), name="esbuild-packets"))

    async def request(self, value: dict[str, Any]) -> Any:
        """Sends one request and waits for its response. Raises :class:`ServiceGone` if
        the process ends first."""
        if self._gone is not None:
            raise self._gone
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        self.in_flight += 1
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if value.get("command") == "build":
            # Each build in flight needs a key of its own (esbuild panics otherwise).
            value = {**value, "key": request_id}
        try:
            self.proc.stdin.write(packet(request_id, True, value))
            return await future
        finally:
            self._pending.pop(request_id, None)
            self.in_flight -= 1
            if not self.in_flight and self._gone is None:
                self._idle = asyncio.get_running_loop().call_later(self.idle_s, self.stop)

    def kill(self) -> None:
        """Kills the process group now; every request in flight fails as killed."""
        self._killed = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Asks the process to end (stdin closed: esbuild exits when it has answered)."""
        self._killed = True
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stops the process and waits for it; killed if it does not end in time."""
        if self._idle is not None:
            self._idle.cancel()
        if self.proc is None:
            return
        self.stop()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The subprocess transport closes itself once its stdin pipe's loss is reported, a
        # callback later: a loop closed before that left it open (a ResourceWarning).
        if self.proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                await self.proc.stdin.wait_closed()

    async def _read_packets(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = self.proc.stdout
        try:
            while True:
                (size,) = _U32.unpack(await reader.readexactly(4))
                body = await reader.readexactly(size)
                (head,) = _U32.unpack_from(body)
                if size > LARGE_PACKET_BYTES:  # a fallback's outputs: copied off the loop
                    value, _ = await asyncio.to_thread(decode, body, 4)
                else:
                    value, _ = decode(body, 4)
                if head & 1 == 0:  # esbuild asks us (a ping): an empty answer
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(packet(head >> 1, False, {}))
                    continue
                future = self._pending.get(head >> 1)
                if future is not None and not future.done():
                    future.set_result(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except (ValueError, IndexError, struct.error):  # not its protocol: treated as a crash
            logger.error("esbuild sent a packet its protocol does not allow; it is stopped")
        gone = await self._ended()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        if self._idle is not None:
            self._idle.cancel()

    async def _ended(self) -> ServiceGone:
        assert self.proc is not None
        if self.proc.returncode is None:  # not reaped yet: its group id is still its own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left behind
        returncode = await self.proc.wait()
        # Its last words (a Go panic's trace), read to the pipe's end.
        await asyncio.wait({self._stderr_task}, timeout=STDERR_WAIT_S)
        self._gone = ServiceGone(returncode, "".join(self._stderr), self._killed)
        return self._gone

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self._stderr.append(chunk.decode("utf-8", "replace"))
            text = "".join(self._stderr)
            self._stderr = [text[-STDERR_TAIL_CHARS:]]
