"""An asyncio TCP proxy between an edge and central that can cut, stall, delay and reset connections.

Modes (``proxy.mode``):

* ``pass``: bytes flow both ways (after ``delay`` seconds per chunk, if set).
* ``refuse``: new connections are accepted and reset at once (a crashed peer / firewall REJECT).
* ``blackhole``: new connections are accepted, what they send is read and dropped, nothing ever
  answers (a stall: the TCP handshake succeeds, the application never replies).

``cut()`` resets every open connection (RST, via SO_LINGER 0); ``freeze()`` keeps open connections
established but stops forwarding in both directions (a half-open link: neither side learns that the
other is gone until a deadline or keepalive fires).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``upstream``."""

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.mode = "pass"
        self.delay = 0.0
        self.frozen = False
        self.accepted = 0
        self.bytes_up = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        count = 0
        for writer in list(self._writers):
            _reset(writer)
            count += 1
        self._writers.clear()
        return count

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or resume) forwarding on open connections without closing them."""
        self.frozen = frozen

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            _reset(writer)
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
            self._writers.discard(writer)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            _reset(writer)
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        task_a = asyncio.ensure_future(self._pump(reader, up_writer, upstream=True))
        task_b = asyncio.ensure_future(self._pump(up_reader, writer, upstream=False))
        for task in (task_a, task_b):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait({task_a, task_b}, return_when=asyncio.FIRST_COMPLETED)
        for task in (task_a, task_b):
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        with contextlib.suppress(Exception):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                while self.frozen:  # noqa: ASYNC110 - a poll keeps freeze() a plain attribute
                    await asyncio.sleep(0.05)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if upstream:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(Exception):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()
