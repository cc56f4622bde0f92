"""The convex probe: /version and one runtime query, concurrently. With the deployment's
secret the query succeeds; without it, a runtime that refuses it still passes; a runtime that
does not answer fails."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.conftest import SECRET
from tests.probes.helpers import TIMEOUT, probe_within
from tests.support import faults
from tests.support.procs import Proc

UNAUTHORIZED = {"status": "error", "errorMessage": "no", "errorData": {"code": "unauthorized"}}


class ConvexLike:
    """A real aiohttp server answering /version and /api/query as told; records the queries.
    With `release` unset, every query waits for it (a runtime that never answers)."""

    def __init__(
        self, *, version: int = 200, query: tuple[int, object] = (200, UNAUTHORIZED)
    ) -> None:
        self.version = version
        self.query = query
        self.seen: list[dict[str, Any]] = []
        self.release: asyncio.Event | None = None

    async def start(self, aiohttp_server: AiohttpServer) -> str:
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_post("/api/query", self._query)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    async def _version(self, _: web.Request) -> web.Response:
        return web.Response(status=self.version, text="1.48.0")

    async def _query(self, request: web.Request) -> web.Response:
        self.seen.append(await request.json())
        if self.release is not None:
            await self.release.wait()
        status, payload = self.query
        return web.Response(status=status, text=json.dumps(payload))


async def test_real_convex_refusing_the_probe_passes(
    session: aiohttp.ClientSession, convex_local: Proc
) -> None:
    """dev/convex-local answers /version and refuses the empty secret: Convex runs."""
    result = await probe_within(session, "convex", convex_local.url)
    assert (result.status, result.output) == (
        "pass",
        "version 200; runtime answered (unauthorized)",
    )


async def test_real_convex_with_the_secret_answers_the_query(
    session: aiohttp.ClientSession, convex_local: Proc
) -> None:
    """With the deployment's secret (what the built-in check gets) the query succeeds, so the
    probe leaves no error in Convex's logs."""
    result = await probe_within(session, "convex", convex_local.url, secret=SECRET)
    assert (result.status, result.output) == ("pass", "version 200; runtime answered")


async def test_query_sent_is_the_contract(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """One `health:instance` query with an empty secret, `now` in ms and the probe's name."""
    convex = ConvexLike()
    result = await probe_within(session, "convex", await convex.start(aiohttp_server))
    assert result.status == "pass"
    [body] = convex.seen
    assert body["path"] == "health:instance"
    args = body["args"]
    assert isinstance(args, dict)
    assert args["secret"] == ""
    assert args["instance"] == "health-sidecar-probe"
    assert abs(args["now"] / 1000 - result.observed_at) < 5


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ((200, UNAUTHORIZED), "runtime answered (unauthorized)"),
        (
            (560, {"status": "error", "errorMessage": "x", "errorData": None}),
            "runtime answered (function_error)",
        ),
        (
            (404, {"code": "FunctionNotFound", "message": "no"}),
            "runtime answered (request_rejected)",
        ),
        ((200, {"status": "success", "value": []}), "runtime answered"),
    ],
)
async def test_any_runtime_answer_passes(
    session: aiohttp.ClientSession,
    aiohttp_server: AiohttpServer,
    query: tuple[int, object],
    said: str,
) -> None:
    """A refusal, a function error, an unknown function or a value all prove the runtime runs."""
    url = await ConvexLike(query=query).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert (result.status, result.output) == ("pass", f"version 200; {said}")


async def test_version_500_fails(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """/version answers 500 although the runtime answers: fail."""
    url = await ConvexLike(version=500).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert (result.status, result.output) == (
        "fail",
        "version: HTTP 500; runtime answered (unauthorized)",
    )


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ((503, "down"), "runtime unavailable: health:instance: HTTP 503"),
        ((200, ["not", "convex"]), "runtime bad_response: health:instance: HTTP 200 with JSON"),
    ],
)
async def test_runtime_down_fails(
    session: aiohttp.ClientSession,
    aiohttp_server: AiohttpServer,
    query: tuple[int, object],
    said: str,
) -> None:
    """/version is fine but the function runtime is unavailable or answers nonsense: fail."""
    url = await ConvexLike(query=query).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert result.status == "fail"
    assert result.output.startswith(f"version 200; {said}")


async def test_runtime_hanging_fails_at_the_timeout(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """/version answers at once, the runtime query never does: fail at the timeout."""
    convex = ConvexLike()
    convex.release = asyncio.Event()
    result = await probe_within(session, "convex", await convex.start(aiohttp_server))
    convex.release.set()
    assert len(convex.seen) == 1
    assert (result.status, result.output) == ("fail", f"timeout after {TIMEOUT:g}s")


async def test_same_host_redirect_of_version_followed(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """/version redirected on the same origin is followed; the runtime answers as usual."""

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/v2/version")

    async def version(_: web.Request) -> web.Response:
        return web.Response(text="1.48.0")

    async def query(_: web.Request) -> web.Response:
        return web.json_response(UNAUTHORIZED)

    app = web.Application()
    app.router.add_get("/version", moved)
    app.router.add_get("/v2/version", version)
    app.router.add_post("/api/query", query)
    server = await aiohttp_server(app)
    result = await probe_within(session, "convex", str(server.make_url("")).rstrip("/"))
    assert (result.status, result.output) == (
        "pass",
        "version 200; runtime answered (unauthorized)",
    )


async def test_runtime_refused_connection_fails(session: aiohttp.ClientSession) -> None:
    """Both parts fail on a refused connection, and both say so."""
    result = await probe_within(session, "convex", faults.refused_url())
    assert result.output == "version: connection refused; runtime unavailable: connection refused"
