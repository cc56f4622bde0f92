"""mastra: `GET /health` says success; expected agents are listed by `GET /api/agents`."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from sidecar.checks import MastraCheck
from sidecar.probes.common import MAX_BODY, Outcome, ProbeFailed, fetch, guarded
from sidecar.result import CheckResult

# Every agent brings its instructions along: the listing gets a larger (still bounded) read.
MAX_AGENTS_BODY = 1024 * 1024


async def probe(session: aiohttp.ClientSession, check: MastraCheck) -> CheckResult:
    """Pass on `200 {"success": true}` from /health and every expected agent registered."""
    return await guarded(check.timeout, _probe(session, check))


async def _probe(session: aiohttp.ClientSession, check: MastraCheck) -> Outcome:
    health = await _json(session, check, "/health", "health", MAX_BODY)
    if health.get("success") is not True:
        return "fail", "health: success is not true"
    if not check.expect_agents:
        return "pass", "health: success"
    # Mastra answers {"<agent id>": {"id": ..., "name": ...}, ...}; partial=true leaves out
    # the tools' JSON schemas.
    agents = await _json(session, check, "/api/agents?partial=true", "agents", MAX_AGENTS_BODY)
    known = set(agents) | {a.get("id") for a in agents.values() if isinstance(a, dict)}
    missing = [name for name in check.expect_agents if name not in known]
    if missing:
        return "fail", f"health: success; missing agents: {', '.join(missing)}"
    return "pass", f"health: success; agents: {', '.join(check.expect_agents)}"


async def _json(
    session: aiohttp.ClientSession, check: MastraCheck, path: str, label: str, max_body: int
) -> dict[str, Any]:
    """The JSON object a GET of `path` answers with 200, or a failure named by `label`."""
    url = f"{check.target}{path}"
    resp = await fetch(session, "GET", url, headers=check.headers, max_body=max_body)
    if resp.status != 200:
        raise ProbeFailed(f"{label}: HTTP {resp.status}")
    if resp.truncated:
        raise ProbeFailed(f"{label}: body over {max_body // 1024} KiB")
    try:
        payload = json.loads(resp.body)
    except ValueError:
        raise ProbeFailed(f"{label}: body is not JSON") from None
    if not isinstance(payload, dict):
        raise ProbeFailed(f"{label}: JSON is not an object")
    return payload
