"""A real misbehaving HTTP server on 127.0.0.1, for faults a real dependency cannot produce."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FaultServer:
    """Accepts connections on 127.0.0.1 and answers each request with `behaviour`.

    The behaviour can be swapped while the server runs (`server.behaviour = ...`), so a test
    can start healthy, inject a fault and clear it again on the same port.
    """

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await _read_request(reader):
                self.requests += 1
                await self.behaviour(reader, writer)
                if writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away, or the server is stopping
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def fault_server(behaviour: Behaviour) -> AsyncIterator[FaultServer]:
    """Run a `FaultServer` for the duration of a block."""
    server = await FaultServer(behaviour).start()
    try:
        yield server
    finally:
        await server.stop()


async def _read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request (head and Content-Length body); False when the peer closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return True


def refused_url() -> str:
    """A loopback URL on which nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# Behaviours ---------------------------------------------------------------------------------


def respond(status: int, body: bytes, content_type: str = "application/json") -> Behaviour:
    """Answer with a complete, well-formed HTTP response."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, content_type, len(body)) + body)
        await writer.drain()

    return behaviour


def hang() -> Behaviour:
    """Accept the request and never answer (until the server stops)."""

    async def behaviour(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    return behaviour


def garbage() -> Behaviour:
    """Answer bytes that are not HTTP at all, then close."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xffSSH-2.0-not-http\r\n\x00garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    return behaviour


def reset_mid_body(status: int = 200) -> Behaviour:
    """Send the head and part of the promised body, then reset the connection (RST)."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, "application/json", 4096) + b'{"status":"success","val')
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    return behaviour


def slow_headers(delay: float) -> Behaviour:
    """Send the response head one byte every `delay` seconds."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in _head(200, "application/json", 2):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(delay)
        writer.write(b"{}")
        await writer.drain()

    return behaviour


def slow_body(delay: float, size: int = 1024) -> Behaviour:
    """Send a prompt head, then the body one byte every `delay` seconds."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "application/json", size))
        for _byte in range(size):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(delay)

    return behaviour


def huge_body(size: int = 200 * 1024 * 1024) -> Behaviour:
    """Answer 200 with a body of `size` bytes, streamed as fast as the client reads."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "application/json", size))
        chunk = b" " * 65536
        sent = 0
        while sent < size:
            piece = chunk[: size - sent]
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    return behaviour


def _head(status: int, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status} Fault\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def redirect(location: str, status: int = 302) -> Behaviour:
    """Answer a redirect to `location` (absolute or relative)."""

    async def behaviour(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status} Fault\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        await writer.drain()

    return behaviour


def sequence(*behaviours: Behaviour) -> Behaviour:
    """Answer the n-th request with the n-th behaviour; the last one answers the rest."""
    answered = 0

    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        answered += 1
        await behaviours[min(answered, len(behaviours)) - 1](reader, writer)

    return behaviour


class MeteredHugeBody:
    """`huge_body` that counts the bytes the client let it send (`sent`)."""

    def __init__(self, size: int = 200 * 1024 * 1024) -> None:
        self.size = size
        self.sent = 0

    async def __call__(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, "application/json", self.size))
        chunk = b" " * 65536
        while self.sent < self.size:
            piece = chunk[: self.size - self.sent]
            writer.write(piece)
            await writer.drain()
            self.sent += len(piece)


class CountingHugeBody:
    """`huge_body` that records, per request, how many body bytes the client let it send
    (`sent`, one entry per request; the last entry grows while a request is being answered)."""

    def __init__(self, size: int = 200 * 1024 * 1024) -> None:
        self.size = size
        self.sent: list[int] = []

    async def __call__(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.sent)
        self.sent.append(0)
        writer.write(_head(200, "application/json", self.size))
        chunk = b" " * 65536
        while self.sent[index] < self.size:
            piece = chunk[: self.size - self.sent[index]]
            writer.write(piece)
            await writer.drain()
            self.sent[index] += len(piece)
