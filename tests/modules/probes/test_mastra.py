"""The mastra probe against the real Mastra server of dev/mastra, and against answers a real
Mastra never gives."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.support import faults
from tests.support.probing import probe_within
from tests.support.procs import Proc


async def test_real_mastra_passes(session: aiohttp.ClientSession, mastra_local: Proc) -> None:
    """A running Mastra answers /health with 200 {"success": true}."""
    result = await probe_within(session, "mastra", mastra_local.url)
    assert (result.status, result.output) == ("pass", "health: success")


async def test_real_mastra_expected_agent_present(
    session: aiohttp.ClientSession, mastra_local: Proc
) -> None:
    """The one agent dev/mastra registers ("assistant") is found in /api/agents."""
    result = await probe_within(session, "mastra", mastra_local.url, expect_agents=("assistant",))
    assert (result.status, result.output) == ("pass", "health: success; agents: assistant")


async def test_real_mastra_expected_agents_missing(
    session: aiohttp.ClientSession, mastra_local: Proc
) -> None:
    """Agents that are not registered fail the check, named in the output."""
    result = await probe_within(
        session, "mastra", mastra_local.url, expect_agents=("ghost", "assistant", "phantom")
    )
    assert result.status == "fail"
    assert result.output == "health: success; missing agents: ghost, phantom"


async def test_agents_matched_by_id_field(session: aiohttp.ClientSession) -> None:
    """An agent registered under another key is found by its `id` as well."""
    agents = b'{"support": {"id": "support-agent", "name": "Support"}}'
    behaviour = faults.sequence(
        faults.respond(200, b'{"success":true}'), faults.respond(200, agents)
    )
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(
            session, "mastra", server.url, expect_agents=("support", "support-agent")
        )
    assert result.status == "pass", result.output


@pytest.mark.parametrize(
    ("body", "output"),
    [
        (b'{"success":false}', "health: success is not true"),
        (b'{"success":"true"}', "health: success is not true"),
        (b'{"status":"ok"}', "health: success is not true"),
        (b"<html>Welcome to Mastra</html>", "health: body is not JSON"),
        (b"[true]", "health: JSON is not an object"),
    ],
)
async def test_health_body_must_say_success(
    session: aiohttp.ClientSession, body: bytes, output: str
) -> None:
    """200 alone is not enough: the JSON must say `"success": true`."""
    async with faults.fault_server(faults.respond(200, body)) as server:
        result = await probe_within(session, "mastra", server.url)
    assert (result.status, result.output) == ("fail", output)


async def test_agents_endpoint_refusing_fails(session: aiohttp.ClientSession) -> None:
    """Healthy, but /api/agents answers 401 (Mastra auth on): the agents cannot be checked."""
    behaviour = faults.sequence(
        faults.respond(200, b'{"success":true}'), faults.respond(401, b"{}")
    )
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(session, "mastra", server.url, expect_agents=("assistant",))
        assert server.requests == 2
    assert (result.status, result.output) == ("fail", "agents: HTTP 401")


async def test_agents_not_asked_for_when_none_expected(session: aiohttp.ClientSession) -> None:
    """Without `expect_agents` the probe makes exactly one request."""
    async with faults.fault_server(faults.respond(200, b'{"success":true}')) as server:
        result = await probe_within(session, "mastra", server.url)
        assert server.requests == 1
    assert result.status == "pass"


async def test_same_host_redirect_followed(session: aiohttp.ClientSession) -> None:
    """Mastra behind a proxy that redirects /health on the same origin."""
    behaviour = faults.sequence(
        faults.redirect("/mastra/health", 308), faults.respond(200, b'{"success":true}')
    )
    async with faults.fault_server(behaviour) as server:
        result = await probe_within(session, "mastra", server.url)
        assert server.requests == 2
    assert (result.status, result.output) == ("pass", "health: success")


async def test_large_agent_listing_is_read_within_its_own_bound(
    session: aiohttp.ClientSession,
) -> None:
    """Many agents with long instructions make /api/agents larger than 64 KiB: still read
    (up to 1 MiB); a listing beyond that fails with its bound named."""
    big = {f"agent_{i}": {"id": f"agent_{i}", "instructions": "x" * 2000} for i in range(100)}
    health = faults.respond(200, b'{"success":true}')
    listing = json.dumps(big).encode()
    assert 64 * 1024 < len(listing) < 1024 * 1024
    async with faults.fault_server(faults.sequence(health, faults.respond(200, listing))) as s:
        result = await probe_within(session, "mastra", s.url, expect_agents=("agent_99",))
    assert result.status == "pass", result.output
    huge = json.dumps({"a": {"id": "a", "instructions": "x" * (1024 * 1024)}}).encode()
    async with faults.fault_server(faults.sequence(health, faults.respond(200, huge))) as s:
        result = await probe_within(session, "mastra", s.url, expect_agents=("a",))
    assert (result.status, result.output) == ("fail", "agents: body over 1024 KiB")


async def test_headers_reach_mastra_with_auth(
    session: aiohttp.ClientSession, aiohttp_server: AiohttpServer
) -> None:
    """A Mastra with auth answers /api/agents 401 without its token: with `headers` the
    probe sends it (to /health too) and passes; without, it fails saying so."""
    seen: list[str | None] = []

    async def health(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"success": True})

    async def agents(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer mastra-token-0123456789":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"assistant": {"id": "assistant"}})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/api/agents", agents)
    url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    bare = await probe_within(session, "mastra", url, expect_agents=("assistant",))
    token = {"Authorization": "Bearer mastra-token-0123456789"}
    authed = await probe_within(session, "mastra", url, expect_agents=("assistant",), headers=token)
    assert (bare.status, bare.output) == ("fail", "agents: HTTP 401")
    assert (authed.status, authed.output) == ("pass", "health: success; agents: assistant")
    assert seen == [None, None, token["Authorization"], token["Authorization"]]
