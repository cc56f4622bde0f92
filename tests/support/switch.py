"""Fault targets whose behaviour is switched while a daemon probes them.

`SwitchServer` is an HTTP server on 127.0.0.1 that answers healthily (a fixed answer, or by
forwarding to a real upstream such as dev/convex-local or the real Mastra) until a fault is
injected, for every path or only for some (`/version`, `/api/`), and that can refuse
connections on its port and take them again. `TcpTarget` is a bare TCP port that accepts,
refuses, or lets connections hang in a full accept queue.

Both run in the test's event loop: never block that loop while a daemon probes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.support import faults

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]
_HOP_HEADERS = ("content-type", "accept", "x-health-sidecar-signature")


@dataclass(frozen=True)
class Request:
    """One request as the switch read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Forward:
    """Answer by forwarding to the upstream; `rewrite` may change a JSON body's fields first
    (e.g. a wrong secret), so the upstream's own code produces the error."""

    rewrite: Rewrite | None = None


@dataclass
class _Fault:
    route: faults.Behaviour | Forward
    paths: tuple[str, ...] = ()
    hits: int = 0

    def matches(self, path: str) -> bool:
        return not self.paths or any(path.startswith(p) for p in self.paths)


@dataclass
class SwitchServer:
    """An HTTP server whose answers are switched at runtime; see the module docstring."""

    healthy: faults.Behaviour | None = None
    upstream: str | None = None
    requests: int = 0
    _fault: _Fault | None = None
    _server: asyncio.Server | None = None
    _placeholder: socket.socket | None = None
    _port: int = 0
    _session: aiohttp.ClientSession | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def fault_hits(self) -> int:
        """Requests answered by the current fault (0 when there is none)."""
        return 0 if self._fault is None else self._fault.hits

    async def start(self) -> SwitchServer:
        assert (self.healthy is None) != (self.upstream is None), "healthy or upstream"
        if self.upstream is not None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10),
                connector=aiohttp.TCPConnector(limit=20),
            )
        await self._listen()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._placeholder is not None:
            self._placeholder.close()
        if self._session is not None:
            await self._session.close()

    def inject(self, route: faults.Behaviour | Forward, *, paths: tuple[str, ...] = ()) -> None:
        """Answer requests whose path starts with one of `paths` (all when empty) with `route`."""
        self._fault = _Fault(route, paths)

    def clear(self) -> None:
        """Answer healthily again (does not reopen a refusing port: see `accept`)."""
        self._fault = None

    async def refuse(self) -> None:
        """Stop listening: connections are refused. The port stays reserved by a bound,
        non-listening socket, so nobody else takes it before `accept`."""
        assert self._server is not None
        assert self._placeholder is None
        self._placeholder = _bound(self._port)
        self._server.close()
        self._server = None

    async def accept(self) -> None:
        """Listen again on the same port."""
        assert self._placeholder is not None
        await self._listen()
        self._placeholder.close()
        self._placeholder = None

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self._port, reuse_port=True
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests += 1
                await self._answer(request, reader, writer)
                if writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away, or the server is stopping
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        fault = self._fault
        route: faults.Behaviour | Forward
        if fault is not None and fault.matches(request.path):
            fault.hits += 1
            route = fault.route
        elif self.healthy is not None:
            route = self.healthy
        else:
            route = Forward()
        if isinstance(route, Forward):
            await self._forward(request, route, writer)
        else:
            await route(reader, writer)

    async def _forward(
        self, request: Request, route: Forward, writer: asyncio.StreamWriter
    ) -> None:
        assert self._session is not None
        assert self.upstream is not None
        body = request.body
        if route.rewrite is not None and body:
            body = json.dumps(route.rewrite(json.loads(body))).encode()
        headers = {k: v for k, v in request.headers.items() if k in _HOP_HEADERS}
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path,
                data=body or None,
                headers=headers,
                allow_redirects=False,
            ) as resp:
                status, answer = resp.status, await resp.read()
                content_type = resp.headers.get("Content-Type", "application/octet-stream")
        except aiohttp.ClientError:
            status, answer, content_type = 502, b'{"code":"BadGateway"}', "application/json"
        head = (
            f"HTTP/1.1 {status} Forwarded\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(answer)}\r\n\r\n"
        ).encode()
        writer.write(head + answer)
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """Read one request (head and Content-Length body); None when the peer closed."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Request(method, path, headers, body)


def _bound(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` that does not listen: connecting to it is refused."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


@contextlib.asynccontextmanager
async def switch_server(
    healthy: faults.Behaviour | None = None, *, upstream: str | None = None
) -> AsyncIterator[SwitchServer]:
    """Run a `SwitchServer` for the duration of a block."""
    server = await SwitchServer(healthy=healthy, upstream=upstream).start()
    try:
        yield server
    finally:
        await server.stop()


class TcpTarget:
    """A bare TCP port for tcp checks: it accepts (and closes) connections, refuses them, or
    stops accepting with a full accept queue, so that a connect hangs (the kernel drops SYNs)."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._fillers: list[socket.socket] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TcpTarget:
        self._listen()
        return self

    async def stop(self) -> None:
        await self._stop_accepting()
        for sock in (*self._fillers, self._listener, self._placeholder):
            if sock is not None:
                sock.close()
        self._fillers.clear()

    async def refuse(self) -> None:
        """Close the listener (the port stays reserved): connections are refused."""
        await self._stop_accepting()
        assert self._listener is not None
        self._placeholder = _bound(self.port)
        self._listener.close()
        self._listener = None

    async def accept(self) -> None:
        """Listen and accept again on the same port."""
        assert self._placeholder is not None
        self._listen()
        self._placeholder.close()
        self._placeholder = None

    async def fill_backlog(self, *, attempt: float = 0.2, most: int = 16) -> None:
        """Stop accepting and fill the accept queue until a connect no longer completes."""
        await self._stop_accepting()
        loop = asyncio.get_running_loop()
        for _ in range(most):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(filler, ("127.0.0.1", self.port)), attempt)
            except TimeoutError:
                filler.close()
                return
            self._fillers.append(filler)
        raise AssertionError(f"the accept queue of port {self.port} never filled")

    async def drain_backlog(self) -> None:
        """Let go of the fillers and accept again."""
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
        self._start_accepting()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(0)  # the smallest queue, so that a few fillers fill it
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._start_accepting()

    def _start_accepting(self) -> None:
        assert self._acceptor is None
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop())

    async def _stop_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
            self._acceptor = None

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            conn.close()
            self.accepted += 1
