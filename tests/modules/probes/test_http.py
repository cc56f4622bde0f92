"""The http probe: method, headers, expected statuses, body regex and redirects."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from sidecar.checks import HttpCheck
from sidecar.probes import run_probe
from sidecar.probes.common import MAX_BODY
from tests.support import faults
from tests.support.probing import TIMEOUT, probe_within


async def test_2xx_passes(session: aiohttp.ClientSession) -> None:
    """With no expected statuses, any 2xx passes."""
    async with faults.fault_server(faults.respond(204, b"")) as server:
        result = await probe_within(session, "http", f"{server.url}/api/health")
    assert (result.status, result.output) == ("pass", "HTTP 204")


@pytest.mark.parametrize(
    ("status", "expect", "verdict"),
    [(503, (503,), "pass"), (200, (204,), "fail"), (404, (), "fail")],
)
async def test_expected_statuses(
    session: aiohttp.ClientSession, status: int, expect: tuple[int, ...], verdict: str
) -> None:
    """`expect_status` replaces "any 2xx": a listed status passes, anything else fails."""
    async with faults.fault_server(faults.respond(status, b"x", "text/plain")) as server:
        result = await probe_within(session, "http", server.url, expect_status=expect)
    assert (result.status, result.output) == (verdict, f"HTTP {status}")


async def test_body_regex(session: aiohttp.ClientSession) -> None:
    """The regex is searched in the body; undecodable bytes do not stop the search."""
    body = b'\xff\xfe{"status": "ok", "db": "up"}'
    async with faults.fault_server(faults.respond(200, body)) as server:
        hit = await probe_within(session, "http", server.url, body_regex=r'"db":\s*"up"')
        miss = await probe_within(session, "http", server.url, body_regex="ok$")
    assert (hit.status, hit.output) == ("pass", "HTTP 200")
    assert (miss.status, miss.output) == ("fail", "body does not match 'ok$'")


async def test_body_regex_sees_only_the_first_64_kib(session: aiohttp.ClientSession) -> None:
    """A match just past the bound is not seen; the same match just inside it is."""
    inside = b" " * (MAX_BODY - 2) + b"ok"
    outside = b" " * MAX_BODY + b"ok"
    async with faults.fault_server(faults.respond(200, inside, "text/plain")) as server:
        result = await probe_within(session, "http", server.url, body_regex="ok")
        assert result.status == "pass"
        server.behaviour = faults.respond(200, outside, "text/plain")
        result = await probe_within(session, "http", server.url, body_regex="ok")
    assert (result.status, result.output) == ("fail", "body does not match 'ok'")


async def test_huge_body_against_a_regex_fails_fast(session: aiohttp.ClientSession) -> None:
    """A 200 MB body of spaces never matches: fail on the first 64 KiB, not the timeout."""
    body = faults.MeteredHugeBody()
    async with faults.fault_server(body) as server:
        result = await probe_within(session, "http", server.url, body_regex="ok")
    assert (result.status, result.output) == ("fail", "body does not match 'ok'")
    assert result.latency < 0.25
    assert body.sent < 32 * 1024 * 1024


async def test_method_and_headers_are_sent(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """The configured method and headers reach the server."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.headers.get('X-Probe')}")

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    server = await aiohttp_server(app)
    url = str(server.make_url("/echo"))
    result = await probe_within(
        session, "http", url, method="POST", headers={"X-Probe": "yes"}, body_regex="^POST yes$"
    )
    assert result.status == "pass", result.output
    head = await probe_within(session, "http", url, method="HEAD")
    assert (head.status, head.output) == ("pass", "HTTP 200")


@pytest.mark.parametrize(("status", "method"), [(303, "GET"), (302, "GET"), (307, "POST")])
async def test_redirect_method(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer, status: int, method: str
) -> None:
    """A POST redirected with 302/303 continues as GET; 307 keeps the method and headers."""

    async def start(_: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": "/done"})

    async def done(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.headers.get('X-Probe')}")

    app = web.Application()
    app.router.add_post("/start", start)
    app.router.add_route("*", "/done", done)
    server = await aiohttp_server(app)
    result = await probe_within(
        session,
        "http",
        str(server.make_url("/start")),
        method="POST",
        headers={"X-Probe": "kept"},
        body_regex=f"^{method} kept$",
    )
    assert (result.status, result.output) == ("pass", "HTTP 200")


async def test_same_host_redirects_are_followed(session: aiohttp.ClientSession) -> None:
    """A relative and an absolute redirect on the same origin lead to the real answer."""
    async with faults.fault_server(faults.hang()) as server:
        server.behaviour = faults.sequence(
            faults.redirect("/step"),
            faults.redirect(f"{server.url}/final", 307),
            faults.respond(200, b"arrived", "text/plain"),
        )
        result = await probe_within(session, "http", server.url, body_regex="arrived")
        assert server.requests == 3
    assert (result.status, result.output) == ("pass", "HTTP 200")


async def test_redirect_loop_stops_after_five(session: aiohttp.ClientSession) -> None:
    """A same-origin redirect loop is followed five times, then fails."""
    async with faults.fault_server(faults.redirect("/again")) as server:
        result = await probe_within(session, "http", server.url)
        assert server.requests == 6
    assert (result.status, result.output) == ("fail", "more than 5 redirects")


async def test_five_redirects_are_allowed(session: aiohttp.ClientSession) -> None:
    """Exactly five same-origin redirects still reach the answer."""
    hops = [faults.redirect(f"/hop{i}") for i in range(5)]
    behaviour = faults.sequence(*hops, faults.respond(200, b"", "text/plain"))
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(session, "http", server.url)
    assert (result.status, result.output) == ("pass", "HTTP 200")


async def test_redirect_without_location_is_the_answer(session: aiohttp.ClientSession) -> None:
    """A 3xx with no Location is not a redirect to follow: it is judged as a status."""
    async with faults.fault_server(faults.respond(302, b"", "text/plain")) as server:
        plain = await probe_within(session, "http", server.url)
        expected = await probe_within(session, "http", server.url, expect_status=(302,))
    assert (plain.status, plain.output) == ("fail", "HTTP 302")
    assert expected.status == "pass"


@pytest.mark.parametrize(
    "behaviour", [faults.garbage(), faults.reset_mid_body(500), faults.respond(401, b"no")]
)
async def test_output_carries_no_secret(
    session: aiohttp.ClientSession, behaviour: faults.Behaviour
) -> None:
    """A token in the URL or a header never shows up in the output of a failure."""
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(
            session,
            "http",
            f"{server.url}/health?token=s3cret-url",
            headers={"Authorization": "Bearer s3cret-header"},
        )
    assert result.status == "fail"
    assert "s3cret" not in result.output


async def test_an_unexpected_error_is_a_failure_not_an_exception(
    session: aiohttp.ClientSession,
) -> None:
    """aiohttp refuses a header value with a line break (config validation normally stops it
    first; built unvalidated here): the probe still answers `fail` instead of raising, and the
    header never reaches the server."""
    async with faults.fault_server(faults.respond(200, b"")) as server:
        check = HttpCheck.model_construct(
            name="bad_header",
            target=server.url,
            interval=10,
            timeout=TIMEOUT,
            headers={"X-Probe": "a\r\nInjected: yes"},
        )
        result = await run_probe(session, check)
        assert server.requests == 0
    assert (result.status, result.output) == ("fail", "unexpected ValueError")


async def test_session_limits_of_the_caller_still_give_short_secret_free_failures(
    full_backlog: int,
) -> None:
    """A session with its own connect timeout (aiohttp puts the URL in that error's text) and
    `raise_for_status=True`: the outputs stay short and free of the URL's token."""
    timeout = aiohttp.ClientTimeout(sock_connect=0.1)
    async with (
        aiohttp.ClientSession(timeout=timeout, raise_for_status=True) as session,
        faults.fault_server(faults.respond(503, b"down", "text/plain")) as server,
    ):
        stuck = await probe_within(session, "http", f"http://127.0.0.1:{full_backlog}/?t=s3cret")
        down = await probe_within(session, "http", f"{server.url}/?t=s3cret")
    assert (stuck.status, stuck.output) == ("fail", "timeout (client session limit)")
    assert (down.status, down.output) == ("fail", "HTTP 503")


async def test_a_pathological_body_regex_neither_stalls_the_loop_nor_hangs(
    session: aiohttp.ClientSession,
) -> None:
    """`(x+x+)+y` over 5,000 x's backtracks for longer than anyone waits: the probe fails
    when the search has had half its timeout, and the event loop (which serves /ready) keeps
    turning meanwhile - the search runs on a thread and releases the GIL."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            now = loop.time()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    async with faults.fault_server(faults.respond(200, b"x" * 5000, "text/plain")) as server:
        result = await probe_within(session, "http", server.url, body_regex="(x+x+)+y")
    ticking.cancel()
    expected = ("fail", f"body_regex: no verdict within {TIMEOUT / 2:g}s")
    assert (result.status, result.output) == expected
    assert len(gaps) > 20
    assert max(gaps) < 0.1, f"the loop stalled for {max(gaps) * 1000:.0f} ms"
