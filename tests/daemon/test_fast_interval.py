"""A check in transition is probed again at its fast interval (HAProxy's `fastinter`): the
whole daemon against dev/convex-local and a switched HTTP target."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.support import faults, procs
from tests.support.daemon import get, running_daemon_async
from tests.support.procs import SECRET
from tests.support.switch import SwitchServer, switch_server

pytestmark = pytest.mark.slow

INTERVAL = 5.0
FAST = 0.2
FAILURES = 3


async def until_status(daemon: procs.Proc, check: str, status: str, *, within: float) -> float:
    """Poll /health until `check` is `status` (as services names it); the monotonic time."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        _, body = await get(daemon.url + "/health")
        if body["services"][check] == status:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{check} not {status} within {within}s")


async def first_fault_hit(target: SwitchServer, *, within: float) -> float:
    """Wait until the target answers a probe with its fault; the monotonic time."""
    deadline = time.monotonic() + within
    while target.fault_hits == 0:
        assert time.monotonic() < deadline, f"no probe within {within}s"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def test_a_failing_check_turns_fail_after_its_fast_interval(
    convex_local: procs.Proc, tmp_path: Path
) -> None:
    """An http check every 5 s with `fast_interval` 0.2 s and three failures before fail:
    once its first probe fails, the next two come 0.2 s apart, so it turns `fail` well
    within one interval of that first failure (at the interval's pace: 10 s later), after
    exactly three failed probes; then, settled, it is probed at its interval again."""
    async with switch_server(faults.respond(200, b"ok")) as target:
        check = {
            "name": "payments",
            "kind": "http",
            "target": target.url,
            "interval": INTERVAL,
            "fast_interval": FAST,
            "timeout": 0.5,
            "jitter": 0,
            "failures_before_fail": FAILURES,
        }
        env = {
            "CONVEX_URL": convex_local.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": "fast-reprobe",
            "SIDECAR_DRAIN_SECONDS": "0",
            "SIDECAR_CHECKS": json.dumps([check]),
        }
        async with running_daemon_async(env, tmp_path / "daemon.log") as daemon:
            await until_status(daemon, "payments", "ok", within=5)
            target.inject(faults.respond(503, b"down"))
            first = await first_fault_hit(target, within=INTERVAL + 2)
            failed = await until_status(daemon, "payments", "error", within=3 * INTERVAL)
            probes = target.fault_hits
            await asyncio.sleep(2.0)
            settled = target.fault_hits - probes
    took = failed - first
    print(f"fast_interval {FAST}s: fail {took:.2f}s after the first failed probe")
    assert took < INTERVAL, took  # at the interval's pace: (FAILURES - 1) x 5 s = 10 s
    assert probes == FAILURES
    assert settled <= 1  # back to its 5 s interval once the verdict is fail
