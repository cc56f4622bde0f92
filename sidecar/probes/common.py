"""What every probe shares: the timeout guard, a bounded same-origin fetch, short failure texts."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from sidecar.result import CheckResult, Stopwatch, Verdict

MAX_BODY = 64 * 1024
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Outcome = tuple[Verdict, str]


class ProbeFailed(Exception):
    """The probe's verdict is `fail`; the message is the result's output."""


@dataclass(frozen=True, slots=True)
class Response:
    """The final answer of a fetch: its status and at most `MAX_BODY` bytes of its body."""

    status: int
    body: bytes
    truncated: bool

    @property
    def text(self) -> str:
        """The (bounded) body decoded as UTF-8, undecodable bytes replaced."""
        return self.body.decode("utf-8", errors="replace")


async def guarded(limit: float, work: Coroutine[Any, Any, Outcome]) -> CheckResult:
    """Run a probe's work within `limit` seconds; every failure becomes a `fail` result."""
    watch = Stopwatch()
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            verdict, output = await work
    except TimeoutError as exc:
        text = f"timeout after {limit:g}s" if deadline.expired() else describe(exc)
        return watch.result("fail", text)
    except Exception as exc:  # a probe never raises; CancelledError is not an Exception
        return watch.result("fail", describe(exc))
    return watch.result(verdict, output)


async def fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    max_body: int = MAX_BODY,
) -> Response:
    """Request `url`, following at most 5 redirects that stay on its scheme, host and port;
    read at most `max_body` bytes of the answer."""
    current = URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        async with session.request(
            method, current, headers=headers, allow_redirects=False, raise_for_status=False
        ) as resp:
            location = resp.headers.get(aiohttp.hdrs.LOCATION)
            if resp.status not in _REDIRECTS or location is None:
                body, truncated = await read_bounded(resp, max_body)
                return Response(resp.status, body, truncated)
            current = _same_origin(current, location)
        if resp.status in (301, 302, 303) and method != "HEAD":
            method = "GET"  # as browsers and curl do; 307 and 308 keep the method
    raise ProbeFailed(f"more than {MAX_REDIRECTS} redirects")


async def read_bounded(
    resp: aiohttp.ClientResponse, max_body: int = MAX_BODY
) -> tuple[bytes, bool]:
    """Read at most `max_body` bytes; (body, True) and the connection closed if there was more."""
    body, more = await read_at_most(resp.content, max_body)
    if more:
        resp.close()  # drop the connection instead of draining the rest
    return body, more


async def read_at_most(stream: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of `stream`, and whether there was more (read no further)."""
    body = bytearray()
    while len(body) <= limit:
        chunk = await stream.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body), False
        body += chunk
    return bytes(body[:limit]), True


def _same_origin(current: URL, location: str) -> URL:
    """Where a redirect leads; refused unless scheme, host and port stay the same."""
    try:
        target = current.join(URL(location))
    except ValueError:
        raise ProbeFailed("invalid redirect location") from None
    if (target.scheme, target.host, target.port) != (current.scheme, current.host, current.port):
        raise ProbeFailed("redirect to another host")
    return target


_TEXTS: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    ((aiohttp.ClientConnectorDNSError, socket.gaierror), "cannot resolve host"),
    (
        (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError),
        "TLS certificate error",
    ),
    ((aiohttp.ClientSSLError, ssl.SSLError), "TLS error"),
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (aiohttp.ServerTimeoutError, "timeout (client session limit)"),
    (aiohttp.ServerDisconnectedError, "server closed the connection"),
    (aiohttp.ClientPayloadError, "response body cut short"),
    (aiohttp.ClientResponseError, "invalid HTTP response"),
    (aiohttp.InvalidURL, "invalid URL"),
)


def describe(exc: BaseException) -> str:
    """A short, secret-free text for a failure: never a URL, a header or a body."""
    if isinstance(exc, ProbeFailed):
        return str(exc)
    for kinds, text in _TEXTS:
        if isinstance(exc, kinds):
            return text
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe(exc.os_error)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError) and str(exc):
        text = str(exc)  # e.g. asyncio's "Multiple exceptions: ..." (addresses, no URL)
        return text if len(text) <= 200 else text[:197] + "..."
    return f"unexpected {type(exc).__name__}"  # aiohttp's own texts may carry the URL
