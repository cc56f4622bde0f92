"""Probes: one small async function per check kind, picked by kind; none of them raises."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp

from sidecar.checks import Check
from sidecar.probes import convex, http, mastra, tcp
from sidecar.result import CheckResult
from sidecar.store.evidence import RuntimeEvidence

__all__ = ["PROBES", "CheckResult", "Probe", "run_probe", "runner"]

Probe = Callable[[aiohttp.ClientSession, Check], Awaitable[CheckResult]]

PROBES: Final[Mapping[str, Callable[[aiohttp.ClientSession, Any], Awaitable[CheckResult]]]] = {
    "convex": convex.probe,
    "mastra": mastra.probe,
    "http": http.probe,
    "tcp": tcp.probe,
}


async def run_probe(session: aiohttp.ClientSession, check: Check) -> CheckResult:
    """Run the probe of the check's kind; always a result, never an exception."""
    return await PROBES[check.kind](session, check)


def runner(evidence: RuntimeEvidence) -> Probe:
    """`run_probe`, with the `convex` check of the store's own deployment proven by `evidence`."""
    probes = {**PROBES, "convex": convex.with_evidence(evidence)}

    async def run(session: aiohttp.ClientSession, check: Check) -> CheckResult:
        return await probes[check.kind](session, check)

    return run
