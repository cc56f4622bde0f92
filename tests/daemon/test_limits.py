"""The daemon at the largest configuration it accepts: 200 checks (the maximum) adding up to
the maximum probe rate (1,000 runs a second). Every result reaches Convex, /live keeps
answering, and SIGTERM still drains. One more check, or a faster interval, is refused at
start (tests/modules/config/invalid/)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.checks import MAX_PROBES_PER_SECOND
from sidecar.limits import MAX_CHECKS
from tests.support import convex, procs
from tests.support.configs import largest_checks
from tests.support.daemon import start_daemon, wait_for
from tests.support.procs import SECRET

pytestmark = [pytest.mark.serial, pytest.mark.slow]


async def test_the_largest_accepted_configuration_is_stored_live_and_drains(
    convex_local: procs.Proc, tmp_path: Path
) -> None:
    """199 tcp checks plus the built-in convex one, every 0.2 s (995 probes a second):
    ready, all 200 results in Convex, /live answering every time during a minute's worth of
    rounds, and SIGTERM drains (/ready 503 at once, exit 0)."""
    interval = MAX_CHECKS / MAX_PROBES_PER_SECOND
    env = {
        "CONVEX_URL": convex_local.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": "limits-max",
        "SIDECAR_TIMEOUT": str(interval),
        "SIDECAR_DRAIN_SECONDS": "1",
        "SIDECAR_CHECKS": largest_checks(convex_local.url, interval),
    }
    daemon = await asyncio.to_thread(start_daemon, env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/ready", 200, within=10)
        rows: list[dict[str, object]] = []
        deadline = time.monotonic() + 10
        while len(rows) < MAX_CHECKS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            rows = await convex.instance_results(convex_local.url, "limits-max")
        statuses: dict[int, int] = {}
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(50):
                async with session.get(daemon.url + "/live") as resp:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                async with session.get(daemon.url + "/metrics") as resp:
                    assert resp.status == 200
                await asyncio.sleep(0.05)
            async with session.get(daemon.url + "/health?verbose") as resp:
                details = await resp.json()
        os.kill(daemon.popen.pid, signal.SIGTERM)
        await wait_for(daemon.url + "/ready", 503, within=1)
        code = await asyncio.to_thread(daemon.popen.wait, 10)
    finally:
        await asyncio.to_thread(daemon.stop)
    assert len(rows) == MAX_CHECKS
    assert all(row["status"] == "pass" for row in rows)
    assert details["store"]["status"] == "ok", details["store"]
    assert statuses == {200: 50}
    assert code == 0
