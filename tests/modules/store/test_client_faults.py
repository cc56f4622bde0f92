"""The Convex client against real misbehaving sockets: each fault maps to its typed error
within the call's timeout, and nothing else escapes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidecar.store import (
    BadResponse,
    ConvexClient,
    FunctionError,
    RequestRejected,
    StoreError,
    Unauthorized,
    Unavailable,
)
from tests.support import faults

TIMEOUT = 0.5
ARGS: dict[str, object] = {}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call_within(url: str, session: aiohttp.ClientSession) -> StoreError:
    """Call a query; return the error it raised, checking it came within the timeout."""
    client = ConvexClient(session, url=url, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await client.query("health:ping", ARGS)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + 0.25, f"took {elapsed:.2f}s"
    return caught.value


async def test_refused_is_unavailable(session: aiohttp.ClientSession) -> None:
    """Nothing listens on the port: connection refused."""
    error = await call_within(faults.refused_url(), session)
    assert isinstance(error, Unavailable)


async def test_accepts_and_never_answers_times_out(session: aiohttp.ClientSession) -> None:
    """The server accepts and reads the request, then says nothing."""
    async with faults.fault_server(faults.hang()) as server:
        error = await call_within(server.url, session)
        assert server.requests == 1
    assert isinstance(error, Unavailable)
    assert "no answer within" in str(error)


async def test_slow_body_times_out(session: aiohttp.ClientSession) -> None:
    """Headers come at once, the body trickles: the timeout covers the whole body."""
    async with faults.fault_server(faults.slow_body(0.05)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unavailable)


async def test_garbage_is_unavailable(session: aiohttp.ClientSession) -> None:
    """Bytes that are not HTTP: the transport fails, which is an unavailable store."""
    async with faults.fault_server(faults.garbage()) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unavailable)


async def test_reset_mid_body_is_unavailable(session: aiohttp.ClientSession) -> None:
    """The connection is reset after part of the promised body."""
    async with faults.fault_server(faults.reset_mid_body()) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unavailable)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_unavailable(session: aiohttp.ClientSession, status: int) -> None:
    """A gateway or backend failure in front of Convex."""
    async with faults.fault_server(faults.respond(status, b"<html>down</html>", "text/html")) as s:
        error = await call_within(s.url, session)
    assert isinstance(error, Unavailable)
    assert str(status) in str(error)


async def test_560_function_error_carries_error_data(session: aiohttp.ClientSession) -> None:
    """560 is Convex's "function failed" status: its body is the function's error."""
    body = b'{"status":"error","errorMessage":"boom","errorData":{"code":"invalid_argument"}}'
    async with faults.fault_server(faults.respond(560, body)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, FunctionError)
    assert error.code == "invalid_argument"
    assert error.data == {"code": "invalid_argument"}


async def test_560_unauthorized_is_typed(session: aiohttp.ClientSession) -> None:
    """A ConvexError with code "unauthorized" is its own type, whatever the message says."""
    body = b'{"status":"error","errorMessage":"x","errorData":{"code":"unauthorized"}}'
    async with faults.fault_server(faults.respond(560, body)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unauthorized)


async def test_560_with_garbage_is_bad_response(session: aiohttp.ClientSession) -> None:
    """560 whose body is not JSON."""
    async with faults.fault_server(faults.respond(560, b"not json", "text/plain")) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, BadResponse)


@pytest.mark.parametrize(
    "body",
    [b"not json at all", b"[1, 2, 3]", b'{"status": "maybe"}', b'{"status": "success"}', b"\xff"],
)
async def test_200_with_wrong_shape_is_bad_response(
    session: aiohttp.ClientSession, body: bytes
) -> None:
    """200 with a body that is not Convex's wire format."""
    async with faults.fault_server(faults.respond(200, body)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, BadResponse)


async def test_request_error_is_rejected(session: aiohttp.ClientSession) -> None:
    """4xx with Convex's {code, message}: the request itself was refused."""
    body = b'{"code":"FunctionNotFound","message":"Could not find public function"}'
    async with faults.fault_server(faults.respond(404, body)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, RequestRejected)
    assert error.code == "FunctionNotFound"
    assert error.status == 404


@pytest.mark.parametrize("status", [401, 403])
async def test_http_auth_refusal_is_unauthorized(
    session: aiohttp.ClientSession, status: int
) -> None:
    """A proxy in front of Convex refusing us."""
    async with faults.fault_server(faults.respond(status, b"no")) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unauthorized)


async def test_oversized_body_is_bad_response_without_buffering(
    session: aiohttp.ClientSession,
) -> None:
    """A 200 MB answer is refused after 4 MiB, not read whole."""
    async with faults.fault_server(faults.huge_body()) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, BadResponse)


async def test_unresolvable_host_is_unavailable(session: aiohttp.ClientSession) -> None:
    """A name that does not resolve (the .invalid TLD never does)."""
    error = await call_within("http://convex.invalid", session)
    assert isinstance(error, Unavailable)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_named_and_not_followed(
    session: aiohttp.ClientSession, status: int
) -> None:
    """A redirect (a proxy or a moved deployment) is not followed - the signed call would go
    to another host - and the error says it was a redirect, not the location."""
    location = "https://elsewhere.example/api/query?token=do-not-print"
    async with faults.fault_server(faults.redirect(location, status)) as server:
        error = await call_within(server.url, session)
        assert server.requests == 1
    assert isinstance(error, BadResponse)
    assert f"redirected (HTTP {status})" in str(error)
    assert "elsewhere" not in str(error)
    assert "the deployment's own URL" in str(error)


async def test_413_is_rejected_as_too_large(session: aiohttp.ClientSession) -> None:
    """A proxy refusing the request's size: a request error that says so."""
    async with faults.fault_server(faults.respond(413, b"<html>too big</html>", "text/html")) as s:
        error = await call_within(s.url, session)
    assert isinstance(error, RequestRejected)
    assert error.status == 413
    assert "too large" in str(error)


async def test_429_is_unavailable(session: aiohttp.ClientSession) -> None:
    """Convex's TooManyConcurrentRequests: try again later, like any overload."""
    body = b'{"code":"TooManyConcurrentRequests","message":"Too many concurrent requests"}'
    async with faults.fault_server(faults.respond(429, body)) as server:
        error = await call_within(server.url, session)
    assert isinstance(error, Unavailable)
    assert "429" in str(error)
