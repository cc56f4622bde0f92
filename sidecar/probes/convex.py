"""convex: the deployment's public HTTP route, and proof that its function runtime answers.

For the store's own deployment the proof is the store's sync (`RuntimeEvidence`): the check
makes no function call of its own. Any other deployment gets one `health:ping` query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp

from sidecar.checks import ConvexCheck
from sidecar.probes.common import MAX_BODY, Outcome, ProbeFailed, describe, fetch, guarded
from sidecar.result import CheckResult
from sidecar.store.client import ConvexClient
from sidecar.store.errors import FunctionError, RequestRejected, StoreError, Unauthorized
from sidecar.store.evidence import RuntimeEvidence
from sidecar.store.health import PING

# A public route a deployment serves without auth: `npx convex network-test` checks it too.
ROUTE = "/instance_name"
# A refusal or an unknown function is still the runtime answering.
_ANSWERED = (Unauthorized, FunctionError, RequestRejected)


async def probe(session: aiohttp.ClientSession, check: ConvexCheck) -> CheckResult:
    """Pass when the public route answers 200 and a `health:ping` query gets any answer."""
    return await guarded(check.timeout, _both(_route(session, check), _ping(session, check)))


def with_evidence(
    evidence: RuntimeEvidence,
) -> Callable[[aiohttp.ClientSession, ConvexCheck], Awaitable[CheckResult]]:
    """The convex probe that, for the store's own deployment, takes the store's calls as the
    runtime's proof; other deployments are probed as `probe` does."""

    async def run(session: aiohttp.ClientSession, check: ConvexCheck) -> CheckResult:
        if check.target != evidence.url:
            return await probe(session, check)
        work = _both(_route(session, check), _proven(evidence))
        return await guarded(check.timeout, work)

    return run


async def _both(route: Awaitable[str], runtime: Awaitable[str]) -> Outcome:
    results = await asyncio.gather(route, runtime, return_exceptions=True)
    texts, failed = [], False
    for result in results:
        if isinstance(result, str):
            texts.append(result)
        elif isinstance(result, Exception):
            failed = True
            texts.append(describe(result))
        else:
            raise result  # CancelledError and friends are not a verdict
    return ("fail" if failed else "pass"), "; ".join(texts)


async def _route(session: aiohttp.ClientSession, check: ConvexCheck) -> str:
    name = ROUTE.lstrip("/")
    try:
        resp = await fetch(session, "GET", f"{check.target}{ROUTE}")
    except Exception as exc:
        raise ProbeFailed(f"{name}: {describe(exc)}") from exc
    if resp.status != 200:
        raise ProbeFailed(f"{name}: HTTP {resp.status}")
    return f"{name} 200"


async def _ping(session: aiohttp.ClientSession, check: ConvexCheck) -> str:
    client = ConvexClient(session, url=check.target, timeout=check.timeout, max_body=MAX_BODY)
    try:
        await client.query(PING, {})
    except _ANSWERED as exc:
        return f"runtime answered ({exc.kind})"
    except StoreError as exc:  # Unavailable, BadResponse: the runtime did not answer
        cause = exc.__cause__
        detail = describe(cause) if isinstance(cause, aiohttp.ClientError) else str(exc)
        raise ProbeFailed(f"runtime {exc.kind}: {detail}") from exc
    return "runtime answered"


async def _proven(evidence: RuntimeEvidence) -> str:
    await evidence.settled()  # at start, the first store call decides (within the timeout)
    if not evidence.fresh():
        # Count from the first call until the window is full: at start, not the window.
        since = evidence.since_first()
        if since is not None:
            raise ProbeFailed(f"runtime: no store call answered yet ({since:.0f}s since the first)")
        raise ProbeFailed(f"runtime: no store call answered within {evidence.window:g}s")
    return "runtime answered (store sync)"
