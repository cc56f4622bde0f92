"""tcp: connect to host:port within the timeout."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from sidecar.checks import TcpCheck
from sidecar.probes.common import Outcome, guarded
from sidecar.result import CheckResult


async def probe(session: aiohttp.ClientSession, check: TcpCheck) -> CheckResult:
    """Pass when a TCP connection to the check's host and port opens in time."""
    return await guarded(check.timeout, _connect(check))


async def _connect(check: TcpCheck) -> Outcome:
    _, writer = await asyncio.open_connection(check.host, check.port)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return "pass", f"connected to {check.target}"
