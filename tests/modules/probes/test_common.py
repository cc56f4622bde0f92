"""`describe`: every failure text is short and never carries a URL, a header or a body."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.probes.common import ProbeFailed, describe

SECRET_URL = URL("http://127.0.0.1:1/health?token=s3cret")
REQUEST = aiohttp.RequestInfo(SECRET_URL, "GET", CIMultiDictProxy(CIMultiDict()), SECRET_URL)


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ProbeFailed("HTTP 503"), "HTTP 503"),
        (socket.gaierror(-2, "Name or service not known"), "cannot resolve host"),
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (aiohttp.ClientOSError(113, "No route to host"), "No route to host"),
        (OSError("Multiple exceptions: [Errno 111] ..."), "Multiple exceptions: [Errno 111] ..."),
        (
            aiohttp.ConnectionTimeoutError(f"Connection timeout to host {SECRET_URL}"),
            "timeout (client session limit)",
        ),
        (
            aiohttp.ClientResponseError(REQUEST, (), status=400, message="s3cret"),
            "invalid HTTP response",
        ),
        (aiohttp.ClientError(f"failed {SECRET_URL}"), "unexpected ClientError"),
        (ValueError("token=s3cret"), "unexpected ValueError"),
    ],
)
def test_describe(exc: BaseException, text: str) -> None:
    """Known failures get a fixed phrase, OS errors their strerror, the rest only a type name."""
    assert describe(exc) == text
    assert "s3cret" not in describe(exc)


def test_describe_bounds_long_os_texts() -> None:
    """An OS error text is cut to 200 characters."""
    assert len(describe(OSError("x" * 5000))) == 200
