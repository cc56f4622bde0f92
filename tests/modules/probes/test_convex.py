"""The convex probe: the public route `/instance_name`, and proof that the function runtime
answers - one `health:ping` query for any deployment, or, for the store's own deployment, the
store's sync (RuntimeEvidence) and no call of its own."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from sidecar.probes import runner
from sidecar.store.evidence import RuntimeEvidence
from tests.support import faults
from tests.support.probing import SLACK, TIMEOUT, make_check, probe_within
from tests.support.procs import Proc

UNAUTHORIZED = {"status": "error", "errorMessage": "no", "errorData": {"code": "unauthorized"}}
PONG = {"status": "success", "value": None}


class ConvexLike:
    """A real aiohttp server answering /instance_name and /api/query as told; records the
    queries. With `release` unset, every query waits for it (a runtime that never answers)."""

    def __init__(self, *, route: int = 200, query: tuple[int, object] = (200, PONG)) -> None:
        self.route = route
        self.query = query
        self.seen: list[dict[str, Any]] = []
        self.release: asyncio.Event | None = None

    async def start(self, aiohttp_server: AiohttpServer) -> str:
        app = web.Application()
        app.router.add_get("/instance_name", self._route)
        app.router.add_post("/api/query", self._query)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    async def _route(self, _: web.Request) -> web.Response:
        return web.Response(status=self.route, text="happy-otter-123")

    async def _query(self, request: web.Request) -> web.Response:
        self.seen.append(await request.json())
        if self.release is not None:
            await self.release.wait()
        status, payload = self.query
        return web.Response(status=status, text=json.dumps(payload))


async def test_real_convex_answers_the_ping(
    session: aiohttp.ClientSession, convex_local: Proc
) -> None:
    """dev/convex-local serves /instance_name and answers health:ping."""
    result = await probe_within(session, "convex", convex_local.url)
    assert (result.status, result.output) == ("pass", "instance_name 200; runtime answered")


async def test_query_sent_is_the_ping(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """One `health:ping` query, without arguments: nothing secret, nothing read."""
    convex_like = ConvexLike()
    result = await probe_within(session, "convex", await convex_like.start(aiohttp_server))
    assert result.status == "pass"
    [body] = convex_like.seen
    assert (body["path"], body["args"]) == ("health:ping", {})


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ((200, UNAUTHORIZED), "runtime answered (unauthorized)"),
        (
            (200, {"status": "error", "errorMessage": "[Request ID: 0a] Server Error"}),
            "runtime answered (function_error)",
        ),
        (
            (404, {"code": "FunctionNotFound", "message": "no"}),
            "runtime answered (request_rejected)",
        ),
        ((200, PONG), "runtime answered"),
    ],
)
async def test_any_runtime_answer_passes(
    session: aiohttp.ClientSession,
    aiohttp_server: AiohttpServer,
    query: tuple[int, object],
    said: str,
) -> None:
    """A refusal, a function error (a deployment without these functions), an unknown
    function or a value all prove the runtime runs."""
    url = await ConvexLike(query=query).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert (result.status, result.output) == ("pass", f"instance_name 200; {said}")


async def test_route_500_fails(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """/instance_name answers 500 although the runtime answers: fail."""
    url = await ConvexLike(route=500).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert (result.status, result.output) == (
        "fail",
        "instance_name: HTTP 500; runtime answered",
    )


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ((503, "down"), "runtime unavailable: health:ping: HTTP 503"),
        ((200, ["not", "convex"]), "runtime bad_response: health:ping: HTTP 200 with JSON"),
    ],
)
async def test_runtime_down_fails(
    session: aiohttp.ClientSession,
    aiohttp_server: AiohttpServer,
    query: tuple[int, object],
    said: str,
) -> None:
    """The route is fine but the function runtime is unavailable or answers nonsense: fail."""
    url = await ConvexLike(query=query).start(aiohttp_server)
    result = await probe_within(session, "convex", url)
    assert result.status == "fail"
    assert result.output.startswith(f"instance_name 200; {said}")


async def test_runtime_hanging_fails_at_the_timeout(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """The route answers at once, the runtime query never does: fail at the timeout."""
    convex_like = ConvexLike()
    convex_like.release = asyncio.Event()
    result = await probe_within(session, "convex", await convex_like.start(aiohttp_server))
    convex_like.release.set()
    assert len(convex_like.seen) == 1
    assert (result.status, result.output) == ("fail", f"timeout after {TIMEOUT:g}s")


async def test_same_host_redirect_of_the_route_followed(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """/instance_name redirected on the same origin is followed."""

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/v2/instance_name")

    async def name(_: web.Request) -> web.Response:
        return web.Response(text="happy-otter-123")

    async def query(_: web.Request) -> web.Response:
        return web.json_response(PONG)

    app = web.Application()
    app.router.add_get("/instance_name", moved)
    app.router.add_get("/v2/instance_name", name)
    app.router.add_post("/api/query", query)
    server = await aiohttp_server(app)
    result = await probe_within(session, "convex", str(server.make_url("")).rstrip("/"))
    assert (result.status, result.output) == ("pass", "instance_name 200; runtime answered")


async def test_runtime_refused_connection_fails(session: aiohttp.ClientSession) -> None:
    """Both parts fail on a refused connection, and both say so."""
    result = await probe_within(session, "convex", faults.refused_url())
    assert result.output == (
        "instance_name: connection refused; runtime unavailable: connection refused"
    )


# --- the store's own deployment: the store's calls prove the runtime --------------------------


async def store_probe(
    session: aiohttp.ClientSession, url: str, evidence: RuntimeEvidence
) -> tuple[str, str]:
    result = await runner(evidence)(session, make_check("convex", url))
    return result.status, result.output


async def test_store_deployment_makes_no_call_of_its_own(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """A store call answered a moment ago proves the runtime: the probe only asks the public
    route and sends no query."""
    convex_like = ConvexLike()
    url = await convex_like.start(aiohttp_server)
    evidence = RuntimeEvidence(url=url, window=5)
    evidence.answered()
    assert await store_probe(session, url, evidence) == (
        "pass",
        "instance_name 200; runtime answered (store sync)",
    )
    assert convex_like.seen == []


async def test_store_deployment_without_a_recent_answer_fails(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """No store call answered within the window (two store periods plus the timeout): the
    runtime is not proven, the check fails, and still no query is sent."""
    now = [100.0]
    convex_like = ConvexLike()
    url = await convex_like.start(aiohttp_server)
    evidence = RuntimeEvidence(url=url, window=122, monotonic=lambda: now[0])
    evidence.answered()
    now[0] += 122
    assert (await store_probe(session, url, evidence))[0] == "pass"
    now[0] += 1
    assert await store_probe(session, url, evidence) == (
        "fail",
        "instance_name 200; runtime: no store call answered within 122s",
    )
    evidence.missed()  # a failed call is no proof either
    assert (await store_probe(session, url, evidence))[0] == "fail"
    assert convex_like.seen == []


async def test_at_start_the_failure_counts_from_the_first_store_call(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """Against a Convex whose runtime never answers, the first failure (what the first log
    line quotes) does not claim a whole window of silence: it counts from the first store
    call, until the window has passed."""
    now = [100.0]
    url = await ConvexLike().start(aiohttp_server)
    evidence = RuntimeEvidence(url=url, window=122, monotonic=lambda: now[0])
    evidence.missed()
    assert await store_probe(session, url, evidence) == (
        "fail",
        "instance_name 200; runtime: no store call answered yet (0s since the first)",
    )
    now[0] += 60
    evidence.missed()
    assert (await store_probe(session, url, evidence))[1].endswith(
        "runtime: no store call answered yet (60s since the first)"
    )
    now[0] += 62
    assert (await store_probe(session, url, evidence))[1].endswith(
        "runtime: no store call answered within 122s"
    )


async def test_store_deployment_waits_for_the_first_sync(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """At start the first sync decides: the probe waits for it (within its timeout) instead of
    failing before any call could have answered."""
    url = await ConvexLike().start(aiohttp_server)
    evidence = RuntimeEvidence(url=url, window=5)
    asyncio.get_running_loop().call_later(TIMEOUT / 2, evidence.answered)
    assert (await store_probe(session, url, evidence))[0] == "pass"
    silent = RuntimeEvidence(url=url, window=5)
    started = asyncio.get_running_loop().time()
    assert await store_probe(session, url, silent) == ("fail", f"timeout after {TIMEOUT:g}s")
    assert asyncio.get_running_loop().time() - started < TIMEOUT + SLACK


async def test_another_deployment_is_pinged_even_with_evidence(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """The store's evidence covers the store's deployment only: a convex check of another
    deployment keeps its own query."""
    other = ConvexLike()
    url = await other.start(aiohttp_server)
    evidence = RuntimeEvidence(url="http://127.0.0.1:1", window=5)
    assert await store_probe(session, url, evidence) == (
        "pass",
        "instance_name 200; runtime answered",
    )
    assert len(other.seen) == 1
