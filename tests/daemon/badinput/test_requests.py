"""Abusive requests against a real running daemon (a subprocess on 127.0.0.1), sent as raw
bytes: bad query parameters, huge URLs and headers, invalid bytes, HTTP/1.0 and pipelining,
bodies on GET, absurd methods, odd paths, HEAD.

Every case must get a bounded answer - a 4xx where the request is wrong, never a 5xx, never a
hang - and afterwards the daemon must still be right and fast (`assert_still_right`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.support import rawhttp
from tests.support.abuse import Daemon, assert_still_right

pytestmark = pytest.mark.serial

Check = Callable[[rawhttp.Exchange], None]


def req(target: str, *headers: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """A request with `Host` and `Connection: close` plus `headers`."""
    lines = [f"{method} {target} {version}", "Host: sidecar", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def ready_ok(answer: rawhttp.Exchange) -> None:
    assert answer.responses[0].json() == {"ready": True}


def health_plain(answer: rawhttp.Exchange) -> None:
    body = answer.responses[0].json()
    assert set(body) == {"status", "timestamp", "services"}, body


def health_details(answer: rawhttp.Exchange) -> None:
    assert "checks" in answer.responses[0].json()


def verbose_error(answer: rawhttp.Exchange) -> None:
    """A clear JSON error naming the parameter."""
    resp = answer.responses[0]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert "verbose" in resp.json()["error"]


def health_or_verbose_error(answer: rawhttp.Exchange) -> None:
    resp = answer.responses[0]
    (health_plain if resp.status == 200 else verbose_error)(answer)


def health_if_found(answer: rawhttp.Exchange) -> None:
    """A path that may or may not be normalised to /health: if it is, it is /health."""
    if answer.responses[0].status == 200:
        health_plain(answer)


def allow_get(answer: rawhttp.Exchange) -> None:
    assert "GET" in answer.responses[0].headers["allow"]


def empty_body(answer: rawhttp.Exchange) -> None:
    resp = answer.responses[0]
    assert resp.body == b""
    assert int(resp.headers["content-length"]) > 0  # HEAD tells the length GET would send


def in_order(*checks: Callable[[rawhttp.Response], None]) -> Check:
    def check(answer: rawhttp.Exchange) -> None:
        assert len(answer.responses) == len(checks)
        for resp, one in zip(answer.responses, checks, strict=True):
            one(resp)

    return check


def is_ready(resp: rawhttp.Response) -> None:
    assert (resp.status, resp.json()) == (200, {"ready": True})


def is_health(resp: rawhttp.Response) -> None:
    assert resp.status == 200
    assert resp.json()["status"] in ("ok", "degraded")


def is_live(resp: rawhttp.Response) -> None:
    assert (resp.status, resp.json()) == (200, {"live": True})


def health_json(answer: rawhttp.Exchange) -> None:
    resp = answer.responses[0]
    assert resp.headers["content-type"].startswith("application/health+json")
    assert resp.json()["status"] in ("pass", "warn")


@dataclass(frozen=True)
class Case:
    """One abusive request and what a correct answer looks like."""

    name: str
    data: bytes
    statuses: frozenset[int]
    check: Check | None = None
    expect: int = 1  # responses to read
    head: bool = False
    reset_ok: bool = False  # the server may reset the connection before we finish sending


def case(
    name: str, data: bytes, statuses: set[int] | int, check: Check | None = None, **kw: object
) -> Case:
    codes = frozenset({statuses} if isinstance(statuses, int) else statuses)
    return Case(name, data, codes, check, **kw)  # type: ignore[arg-type]


TOO_LONG = {400, 414, 431}
MANY_PARAMS = "&".join(f"p{i}={i}" for i in range(900))
PIPELINE_3 = b"".join(
    [
        b"GET /ready HTTP/1.1\r\nHost: sidecar\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: sidecar\r\n\r\n",
        b"GET /live HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n",
    ]
)
PIPELINE_100 = b"GET /ready HTTP/1.1\r\nHost: sidecar\r\n\r\n" * 99 + req("/ready")

CASES = [
    # Query parameters ----------------------------------------------------------------------
    case("verbose-maybe", req("/health?verbose=maybe"), 400, verbose_error),
    case("verbose-invalid-utf8", req("/health?verbose=%ff"), 400, verbose_error),
    case("verbose-nul", req("/health?verbose=%00"), 400, verbose_error),
    case("verbose-huge-value", req("/health?verbose=" + "1" * 7000), 400, verbose_error),
    case("verbose-repeated-last-bad", req("/health?verbose=1&verbose=maybe"), 400, verbose_error),
    case(
        "verbose-repeated-conflicting",
        req("/health?verbose=1&verbose=0"),
        {200, 400},
        health_or_verbose_error,
    ),
    case(
        "verbose-bad-with-health-json",
        req("/health?verbose=nah", "Accept: application/health+json"),
        400,
        verbose_error,
    ),
    case("head-verbose-bad", req("/health?verbose=maybe", method="HEAD"), 400, head=True),
    # `verbose` is not a /ready parameter: ignored like any unknown one.
    case("ready-verbose-invalid-utf8", req("/ready?verbose=%ff"), 200, ready_ok),
    case("ready-broken-percent", req("/ready?%zz=%zz&&&==&%"), 200, ready_ok),
    case("health-broken-percent-key", req("/health?%zz"), 200, health_plain),
    case("health-verbose-is-case-sensitive", req("/health?VERBOSE=maybe"), 200, health_plain),
    case("health-900-params", req("/health?" + MANY_PARAMS), 200, health_plain),
    case("verbose-with-junk-params", req("/health?verbose&%zz=%ff&x"), 200, health_details),
    case("metrics-name-filter-junk", req("/metrics?name[]=%ff&name[]=" + "x" * 4000), 200),
    # Long URLs --------------------------------------------------------------------------------
    case("url-just-under-8k", req("/ready?pad=" + "a" * 8000), 200, ready_ok),
    case("url-8k-query", req("/ready?x=" + "a" * 8192), TOO_LONG),
    case("url-64k-path", req("/" + "a" * 65536), TOO_LONG),
    case("url-1m-query", req("/ready?" + "a" * (1 << 20)), TOO_LONG, reset_ok=True),
    # Headers ----------------------------------------------------------------------------------
    case("header-value-9k", req("/ready", "X-Big: " + "b" * 9000), TOO_LONG),
    case("header-name-9k", req("/ready", "X" * 9000 + ": v"), TOO_LONG),
    case("header-line-1m", req("/ready", "X-Big: " + "b" * (1 << 20)), TOO_LONG, reset_ok=True),
    case("headers-200", req("/ready", *(f"X-H{i}: v" for i in range(200))), TOO_LONG),
    case("headers-10000", req("/ready", *(f"X{i}: v" for i in range(10000))), TOO_LONG),
    case(
        "headers-100-of-8k",
        req("/ready", *(f"X-H{i}: {'v' * 8000}" for i in range(100))),
        200,
        ready_ok,
    ),
    case(
        "accept-7k-health-json",
        req("/health", "Accept: " + "text/x-junk;q=0.1," * 350 + "application/health+json"),
        200,
        health_json,
    ),
    case(
        "authorization-8k-junk",
        req("/health?verbose", "Authorization: Bearer " + "z" * 8000),
        200,
        health_details,
    ),
    case("duplicate-host", req("/ready", "Host: other"), 400),
    # Invalid bytes ----------------------------------------------------------------------------
    case("nul-in-path", b"GET /re\x00ady HTTP/1.1\r\nHost: sidecar\r\n\r\n", 400),
    case("ff-in-method", b"G\xffT /ready HTTP/1.1\r\nHost: sidecar\r\n\r\n", 400),
    case("raw-utf8-in-path", "GET /héalth HTTP/1.1\r\nHost: s\r\n\r\n".encode(), 400),
    case("control-char-in-query", b"GET /health?verbose=\x01 HTTP/1.1\r\nHost: s\r\n\r\n", 400),
    case("tab-after-method", b"GET\t/ready HTTP/1.1\r\nHost: sidecar\r\n\r\n", 400),
    case("nul-in-header-value", req("/ready", "X-A: a\x00b"), 400),
    case("space-in-header-name", req("/ready", "X A: a"), 400),
    case("obsolete-line-folding", req("/ready", "X-A: a\r\n b"), 400),
    case("bare-lf-line-endings", b"GET /ready HTTP/1.1\nHost: sidecar\n\n", 400),
    case("http-version-9-9", req("/ready", version="HTTP/9.9"), 400),
    case("tls-client-hello", bytes.fromhex("16030100a5010000a10303") + bytes(100), 400),
    case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # Protocol ---------------------------------------------------------------------------------
    case("http10-without-host", b"GET /ready HTTP/1.0\r\n\r\n", 200, ready_ok),
    case("http11-without-host", b"GET /ready HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
    case("leading-empty-lines", b"\r\n\r\n" + req("/ready"), 200, ready_ok),
    case("pipelined-3", PIPELINE_3, 200, in_order(is_ready, is_health, is_live), expect=3),
    case("pipelined-100", PIPELINE_100, 200, in_order(*[is_ready] * 100), expect=100),
    case("get-with-body", req("/ready", "Content-Length: 5") + b"hello", 200, ready_ok),
    case(
        "get-with-1m-body",
        req("/ready", "Content-Length: 1048576") + b"z" * (1 << 20),
        200,
        ready_ok,
    ),
    case(
        "get-with-chunked-body",
        req("/ready", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
        200,
        ready_ok,
    ),
    case(
        "get-promising-10gb-body",
        b"GET /ready HTTP/1.1\r\nHost: s\r\nContent-Length: 10000000000\r\n\r\nabc",
        200,
        ready_ok,
    ),
    case("expect-100-continue", req("/ready", "Expect: 100-continue", "Content-Length: 10"), 200),
    case(
        "content-length-and-chunked",
        req("/ready", "Content-Length: 5", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
        400,
    ),
    case("negative-content-length", req("/ready", "Content-Length: -1"), 400),
    case(
        "websocket-upgrade",
        req(
            "/ready",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ),
        200,
        ready_ok,
    ),
    case("h2c-upgrade", req("/ready", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__"), 200),
    # Methods ----------------------------------------------------------------------------------
    case("method-brew", req("/ready", method="BREW"), {400, 405}),
    case("method-lowercase-get", req("/ready", method="get"), {400, 405}),
    case("method-5000-chars", req("/ready", method="X" * 5000), {400, 405}),
    case("method-delete", req("/health", method="DELETE"), 405, allow_get),
    case("method-propfind", req("/health", method="PROPFIND"), 405, allow_get),
    case("method-trace", req("/ready", method="TRACE"), 405, allow_get),
    case(
        "method-post-1m-body",
        req("/ready", "Content-Length: 1048576", method="POST") + b"z" * (1 << 20),
        405,
    ),
    case("method-connect", req("sidecar:443", method="CONNECT"), {400, 404, 405}),
    case("options-asterisk", req("*", method="OPTIONS"), {400, 404, 405}),
    case("head-health", req("/health", method="HEAD"), 200, empty_body, head=True),
    case("head-ready", req("/ready", method="HEAD"), 200, empty_body, head=True),
    case("head-metrics", req("/metrics", method="HEAD"), 200, head=True),
    # Paths ------------------------------------------------------------------------------------
    case("dot-dot-health", req("/../health"), {200, 400, 404}, health_if_found),
    case("dot-dot-etc-passwd", req("/../../../../etc/passwd"), {400, 404}),
    case("dot-dot-inside", req("/x/../health"), {200, 400, 404}, health_if_found),
    case("encoded-dot-dot", req("/%2e%2e/%2e%2e/health"), {200, 400, 404}, health_if_found),
    case("encoded-slash", req("/api%2Fhealth"), {200, 400, 404}, health_if_found),
    case("double-slash", req("//health"), {200, 400, 404}, health_if_found),
    case("trailing-slash", req("/health/"), {200, 301, 308, 404}, health_if_found),
    case("percent-encoded-letter", req("/heal%74h"), 200, health_plain),
    case("upper-case-path", req("/HEALTH"), 404),
    case("encoded-nul-in-path", req("/health%00"), {400, 404}),
    case("broken-percent-in-path", req("/health%zz"), {400, 404}),
    case("matrix-parameter", req("/health;x=1"), {400, 404}),
    case("fragment", req("/health#frag"), {200, 400}, health_if_found),
    case("absolute-form-target", req("http://elsewhere.example/ready"), 200, ready_ok),
]


@pytest.mark.parametrize("abuse", CASES, ids=[c.name for c in CASES])
def test_abusive_request(daemon: Daemon, abuse: Case) -> None:
    """One abusive request: a bounded, correct answer (a status from the allowed set, never a
    5xx, never a hang), then the daemon is still right, fast and logging clean JSON."""
    answer = rawhttp.exchange(
        daemon.host, daemon.port, abuse.data, expect=abuse.expect, head=abuse.head
    )
    if not answer.responses:
        assert abuse.reset_ok, f"{abuse.name}: the connection ended without an answer"
        assert answer.reset or answer.closed
    else:
        assert all(s < 500 for s in answer.statuses), answer.statuses
        assert answer.statuses[0] in abuse.statuses, (answer.statuses, answer.responses[0].body)
        if abuse.check is not None:
            abuse.check(answer)
    assert answer.elapsed < 5.0
    assert_still_right(daemon, abuse.name)
