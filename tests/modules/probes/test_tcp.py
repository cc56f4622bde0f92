"""The tcp probe against real loopback sockets."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support import faults
from tests.support.probing import TIMEOUT, probe_within


def port_of(url: str) -> int:
    return int(url.rpartition(":")[2])


async def test_listening_port_passes_and_the_connection_is_closed(
    session: aiohttp.ClientSession,
) -> None:
    """A listener accepts: pass; the probe then closes its side cleanly (the server reads EOF)."""
    closed = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await reader.read() == b"":
            closed.set()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        result = await probe_within(session, "tcp", f"127.0.0.1:{port}")
        async with asyncio.timeout(1):
            await closed.wait()
    assert (result.status, result.output) == ("pass", f"connected to 127.0.0.1:{port}")


async def test_refused(session: aiohttp.ClientSession) -> None:
    """Nothing listens on the port."""
    result = await probe_within(session, "tcp", f"127.0.0.1:{port_of(faults.refused_url())}")
    assert (result.status, result.output) == ("fail", "connection refused")


async def test_full_accept_queue_times_out(
    session: aiohttp.ClientSession, full_backlog: int
) -> None:
    """The listener never accepts and its queue is full: the connect hangs until the timeout."""
    result = await probe_within(session, "tcp", f"127.0.0.1:{full_backlog}")
    assert (result.status, result.output) == ("fail", f"timeout after {TIMEOUT:g}s")
    assert result.latency >= TIMEOUT


async def test_unresolvable_host(session: aiohttp.ClientSession) -> None:
    """A host name that never resolves (the .invalid TLD)."""
    result = await probe_within(session, "tcp", "health-sidecar-probe.invalid:5432")
    assert (result.status, result.output) == ("fail", "cannot resolve host")
