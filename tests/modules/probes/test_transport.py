"""Every URL probe (convex, mastra, http) against real misbehaving sockets: each fault is a
`fail` with a short output, within the timeout, and nothing escapes."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.support import faults
from tests.support.probing import TIMEOUT, URL_KINDS, probe_within

pytestmark = pytest.mark.parametrize("kind", URL_KINDS)


async def test_refused(session: aiohttp.ClientSession, kind: str) -> None:
    """Nothing listens on the port."""
    result = await probe_within(session, kind, faults.refused_url())
    assert result.status == "fail"
    assert "connection refused" in result.output


async def test_accepts_and_never_answers(session: aiohttp.ClientSession, kind: str) -> None:
    """The server reads the request and says nothing: fail at the timeout, not later."""
    async with faults.fault_server(faults.hang()) as server:
        result = await probe_within(session, kind, server.url)
        assert server.requests >= 1
    assert result.status == "fail"
    assert result.output == f"timeout after {TIMEOUT:g}s"
    assert result.latency >= TIMEOUT


@pytest.mark.parametrize("behaviour", [faults.slow_headers(0.05), faults.slow_body(0.05)])
async def test_trickling_answer(
    session: aiohttp.ClientSession, kind: str, behaviour: faults.Behaviour
) -> None:
    """Head or body arrive one byte at a time: the timeout covers the whole exchange."""
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(session, kind, server.url)
    assert (result.status, result.output) == ("fail", f"timeout after {TIMEOUT:g}s")


async def test_garbage(session: aiohttp.ClientSession, kind: str) -> None:
    """Bytes that are not HTTP at all."""
    async with faults.fault_server(faults.garbage()) as server:
        result = await probe_within(session, kind, server.url)
    assert result.status == "fail"
    assert "invalid HTTP response" in result.output


async def test_reset_mid_body(session: aiohttp.ClientSession, kind: str) -> None:
    """The head and part of the promised body, then a TCP reset."""
    async with faults.fault_server(faults.reset_mid_body()) as server:
        result = await probe_within(session, kind, server.url)
    assert result.status == "fail"
    assert "response body cut short" in result.output


async def test_server_error(session: aiohttp.ClientSession, kind: str) -> None:
    """A 500 from the dependency (or a proxy in front of it)."""
    async with faults.fault_server(faults.respond(500, b"<h1>oops</h1>", "text/html")) as server:
        result = await probe_within(session, kind, server.url)
    assert result.status == "fail"
    assert "HTTP 500" in result.output


async def test_unresolvable_host(session: aiohttp.ClientSession, kind: str) -> None:
    """A host name that never resolves (the .invalid TLD)."""
    result = await probe_within(session, kind, "http://health-sidecar-probe.invalid:4111")
    assert result.status == "fail"
    assert "cannot resolve host" in result.output


async def test_huge_body_is_not_read_whole(session: aiohttp.ClientSession, kind: str) -> None:
    """A 200 MB answer: the verdict comes fast and the server got to send only a bounded
    part of it (64 KiB for the probe; Convex's runtime client stops at 4 MiB), plus what
    the kernel buffers on the loopback."""
    body = faults.MeteredHugeBody()
    async with faults.fault_server(body) as server:
        started = time.monotonic()
        result = await probe_within(session, kind, server.url)
        elapsed = time.monotonic() - started
    assert elapsed < 1.0
    assert body.sent < 32 * 1024 * 1024, f"{body.sent} bytes sent"
    expected = {
        "http": ("pass", "HTTP 200"),
        "mastra": ("fail", "health: body over 64 KiB"),
        "convex": (
            "fail",
            "instance_name 200; runtime bad_response: response body over 65536 bytes",
        ),
    }
    assert (result.status, result.output) == expected[kind]


async def test_redirect_to_another_host_is_refused(
    session: aiohttp.ClientSession, kind: str
) -> None:
    """A redirect that changes only the port, only the host name or only the scheme is not
    followed (a followed one would reach the other server, or loop back here)."""
    async with (
        faults.fault_server(faults.respond(200, b'{"success":true}')) as elsewhere,
        faults.fault_server(faults.hang()) as server,
    ):
        for location in (
            f"http://127.0.0.1:{elsewhere.port}/health",
            f"http://localhost:{server.port}/health",
            f"https://127.0.0.1:{server.port}/health",
        ):
            server.behaviour = faults.redirect(location)
            server.requests = 0
            result = await probe_within(session, kind, server.url)
            assert result.status == "fail", location
            assert "redirect to another host" in result.output, location
            # convex: /instance_name and the runtime query each got one redirect.
            assert server.requests == (2 if kind == "convex" else 1), location
        assert elsewhere.requests == 0
