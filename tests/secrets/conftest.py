"""Shared by the secret tests: a dev/convex-local of their own holding a random secret, and a
small recording HTTP server on 127.0.0.1 that keeps the request heads it received."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from tests.secrets.leaks import make_secret
from tests.support import procs

CONVEX_SECRET = make_secret("cvx")


@pytest.fixture(scope="package")
def own_convex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """dev/convex-local holding CONVEX_SECRET (random per run), on a free port."""
    log = tmp_path_factory.mktemp("secrets-convex") / "out.log"
    with procs.convex_local(log, CONVEX_SECRET) as proc:
        yield proc


class Recorder:
    """Answers every request with `status` (and `location`, for a redirect) and keeps its head;
    runs in the test's event loop."""

    def __init__(self, status: int = 200, body: bytes = b'{"ok":true}') -> None:
        self.status = status
        self.body = body
        self.location: str | None = None
        self.heads: list[str] = []
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> Recorder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        """Stop listening: from now on connections are refused."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.heads.append(head.decode("latin-1"))
            extra = f"Location: {self.location}\r\n" if self.location else ""
            writer.write(
                f"HTTP/1.1 {self.status} Recorded\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n{extra}Connection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
