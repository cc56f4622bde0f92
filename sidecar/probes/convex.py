"""convex: `GET /version` and one query through the function runtime, concurrently."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from sidecar.checks import ConvexCheck
from sidecar.probes.common import MAX_BODY, Outcome, ProbeFailed, describe, fetch, guarded
from sidecar.probes.result import CheckResult
from sidecar.store.client import ConvexClient
from sidecar.store.errors import FunctionError, RequestRejected, StoreError, Unauthorized

# Without the deployment's secret the runtime refuses the query: that still proves it runs.
_ANSWERED = (Unauthorized, FunctionError, RequestRejected)


async def probe(session: aiohttp.ClientSession, check: ConvexCheck) -> CheckResult:
    """Pass when /version answers 200 and the function runtime answers at all."""
    return await guarded(check.limit, _probe(session, check))


async def _probe(session: aiohttp.ClientSession, check: ConvexCheck) -> Outcome:
    results = await asyncio.gather(
        _version(session, check), _runtime(session, check), return_exceptions=True
    )
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


async def _version(session: aiohttp.ClientSession, check: ConvexCheck) -> str:
    try:
        resp = await fetch(session, "GET", f"{check.target}/version")
    except Exception as exc:
        raise ProbeFailed(f"version: {describe(exc)}") from exc
    if resp.status != 200:
        raise ProbeFailed(f"version: HTTP {resp.status}")
    return "version 200"


async def _runtime(session: aiohttp.ClientSession, check: ConvexCheck) -> str:
    client = ConvexClient(session, url=check.target, timeout=check.limit, max_body=MAX_BODY)
    secret = check.secret.get_secret_value() if check.secret else ""
    args = {"secret": secret, "now": time.time() * 1000, "instance": "health-sidecar-probe"}
    try:
        await client.query("health:instance", args)
    except _ANSWERED as exc:
        return f"runtime answered ({exc.kind})"
    except StoreError as exc:  # Unavailable, BadResponse: the runtime did not answer
        cause = exc.__cause__
        detail = describe(cause) if isinstance(cause, aiohttp.ClientError) else str(exc)
        raise ProbeFailed(f"runtime {exc.kind}: {detail}") from exc
    return "runtime answered"
