"""Building checks for the probe tests and running them against the clock."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from sidecar.checks import ConvexCheck, HttpCheck, MastraCheck, TcpCheck
from sidecar.probes import CheckResult, run_probe

TIMEOUT = 0.5
SLACK = 0.3
URL_KINDS = ("convex", "mastra", "http")
_MODELS: dict[str, Any] = {
    "convex": ConvexCheck,
    "mastra": MastraCheck,
    "http": HttpCheck,
    "tcp": TcpCheck,
}


def make_check(
    kind: str, target: str, **fields: Any
) -> ConvexCheck | MastraCheck | HttpCheck | TcpCheck:
    """A resolved check of `kind` with the tests' short timeout."""
    check: ConvexCheck | MastraCheck | HttpCheck | TcpCheck = _MODELS[kind](
        name=f"{kind}_probe", target=target, interval=10, timeout=TIMEOUT, **fields
    )
    return check


async def probe_within(
    session: aiohttp.ClientSession, kind: str, target: str, **fields: Any
) -> CheckResult:
    """Run one probe; assert its result came within the timeout (plus slack) and is sane."""
    check = make_check(kind, target, **fields)
    started = time.monotonic()
    result = await run_probe(session, check)
    elapsed = time.monotonic() - started
    assert elapsed < check.timeout + SLACK, f"took {elapsed:.2f}s: {result}"
    assert 0 <= result.latency <= elapsed
    assert result.output
    return result
