"""How soon a sidecar says a local Mastra fault: /health `error`, then /ready 503.

    .venv/bin/python bench/detection.py [--runs 3] [--interval 10] [--fast-interval 1]
                                        [--peers 0]

Runs dev/convex-local (a fresh one), the real Mastra behind a switch (tests/support/switch.py)
and one sidecar at the given check interval and fast interval (timeout 2 s, or the interval if
shorter; the other settings at their defaults), plus `--peers` more sidecars whose Mastra stays
healthy (0: a fleet of one). Each run stops this sidecar's Mastra (its port refuses
connections) at a random phase of the check interval and reports, in seconds from that moment
(polled every 20 ms):

  first_fail   /health?verbose shows mastra's first failed probe
  health_error /health says `mastra: error` (failures_before_fail failures in a row)
  ready_503    /ready answers 503

then starts Mastra again and waits until the sidecar is ready before the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common import median_and_worst, repeated
from tests.support import procs
from tests.support.daemon import get, running_daemon_async, wait_for
from tests.support.procs import SECRET
from tests.support.switch import SwitchServer, switch_server

POLL = 0.02


async def one_run(url: str, mastra: SwitchServer, interval: float) -> dict[str, float]:
    """Stop Mastra at a random phase, time the three moments, start it again."""
    await asyncio.sleep(random.uniform(0, interval))
    await mastra.refuse()
    stopped = time.monotonic()
    seen: dict[str, float] = {}
    deadline = stopped + 6 * interval + 30
    while "ready_503" not in seen and time.monotonic() < deadline:
        _, details = await get(url + "/health?verbose")
        now = time.monotonic() - stopped
        if details["checks"]["mastra"]["consecutive_failures"] >= 1:
            seen.setdefault("first_fail", now)
        if details["services"]["mastra"] == "error":
            seen.setdefault("health_error", now)
        if (await get(url + "/ready"))[0] == 503:
            seen.setdefault("ready_503", now)
        await asyncio.sleep(POLL)
    await mastra.accept()
    await wait_for(url + "/ready", 200, within=3 * interval + 30)
    return {key: round(value, 2) for key, value in seen.items()}


@contextlib.asynccontextmanager
async def sidecar(
    convex: str, mastra: str, name: str, log: Path, args: argparse.Namespace
) -> AsyncIterator[procs.Proc]:
    """One sidecar at the benchmark's interval, ready, for a block."""
    env = {
        "CONVEX_URL": convex,
        "MASTRA_URL": mastra,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": name,
        "SIDECAR_INTERVAL": str(args.interval),
        "SIDECAR_FAST_INTERVAL": str(args.fast_interval),
        "SIDECAR_TIMEOUT": str(min(2.0, args.interval)),  # the default, at most the interval
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    async with running_daemon_async(env, log, wait="ready", timeout=60) as proc:
        yield proc


async def measure(convex: str, mastra: str, tmp: Path, args: argparse.Namespace) -> list[Any]:
    async with contextlib.AsyncExitStack() as stack:
        for n in range(args.peers):
            await stack.enter_async_context(
                sidecar(convex, mastra, f"peer-{n}", tmp / f"peer-{n}.log", args)
            )
        switch = await stack.enter_async_context(switch_server(upstream=mastra))
        proc = await stack.enter_async_context(
            sidecar(convex, switch.url, "measured", tmp / "measured.log", args)
        )
        return await repeated(args.runs, lambda: one_run(proc.url, switch, args.interval))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds")
    parser.add_argument("--fast-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--peers", type=int, default=0, help="healthy sidecars beside it")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="detection-"))
    with (
        procs.convex_local(tmp / "convex.log", SECRET) as convex,
        procs.mastra(tmp / "mastra.log") as mastra,
    ):
        results = asyncio.run(measure(convex.url, mastra.url, tmp, args))
    print(
        f"\n{args.runs} runs; interval {args.interval:g}s, fast interval "
        f"{args.fast_interval:g}s, {args.peers + 1} instance(s); seconds after Mastra stopped:"
    )
    for key in ("first_fail", "health_error", "ready_503"):
        values = [r[key] for r in results if key in r]
        if values:
            print(f"  {key:13} {median_and_worst(values)}")
    for later, earlier in (("health_error", "first_fail"), ("ready_503", "health_error")):
        gaps = [r[later] - r[earlier] for r in results if {later, earlier} <= r.keys()]
        if gaps:
            print(f"  {later} after {earlier}: {median_and_worst(gaps)}")
    print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
