"""Runs every check on its own interval, concurrently, and keeps the heartbeat.

Each check has its own task: a hung dependency delays nothing else. A supervisor restarts a
check task that crashed (logged and counted) and beats the heartbeat that `/live` reads.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import aiohttp

from sidecar import logs
from sidecar.checks import Check
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.probes import Probe, run_probe
from sidecar.result import CheckResult, Stopwatch

# How often the supervisor beats the heartbeat and restarts a crashed check loop.
TICK = 1.0
# A probe enforces its own timeout; this is the scheduler's backstop if one ever does not.
BACKSTOP_GRACE = 1.0
# The first round starts one check every 10 ms (200 checks: 2 s), never all at once, and
# within its interval; each check keeps its place in later rounds.
FIRST_ROUND_STEP = 0.01


class Scheduler:
    """Starts one loop per check and supervises them until cancelled."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        metrics: Metrics,
        session: aiohttp.ClientSession,
        checks: Sequence[Check],
        probe: Probe = run_probe,
        rng: random.Random | None = None,
        first_round_step: float = FIRST_ROUND_STEP,
        tick: float = TICK,
        backstop_grace: float = BACKSTOP_GRACE,
    ) -> None:
        self._monitor = monitor
        self._metrics = metrics
        self._session = session
        self._checks = {c.name: c for c in checks}
        self._probe = probe
        self._rng = rng or random.Random()
        self._tick = tick
        self._backstop_grace = backstop_grace
        self._log = logs.get("scheduler")
        self._first = first_offsets(checks, step=first_round_step)

    async def run(self) -> None:
        """Run until cancelled; cancelling stops every check loop before returning."""
        tasks = {name: self._start(name, self._first[name]) for name in self._checks}
        try:
            while True:
                self._monitor.heartbeat()
                for name, task in list(tasks.items()):
                    if task.done():
                        tasks[name] = self._restart(name, task)
                await asyncio.sleep(self._tick)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _start(self, name: str, delay: float = 0.0) -> asyncio.Task[None]:
        return asyncio.create_task(self._loop(self._checks[name], delay), name=f"check:{name}")

    def _restart(self, name: str, task: asyncio.Task[None]) -> asyncio.Task[None]:
        error = None if task.cancelled() else task.exception()
        self._metrics.check_crashes.labels(check=name).inc()
        self._log.error(
            "check loop crashed; restarting",
            check=name,
            error=repr(error)[:300],
            exc_info=error,
        )
        return self._start(name)

    async def _loop(self, check: Check, delay: float) -> None:
        """Probe `check` forever: after `delay`, then every interval (with jitter, without
        drift)."""
        next_at = time.monotonic() + delay
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += spacing(check, self._rng)
            if self._monitor.snapshot.probes(check):  # else another instance does
                self._monitor.record(check.name, await self._run(check))
            # A probe slower than its interval does not make the next ones pile up.
            next_at = max(next_at, time.monotonic())

    async def _run(self, check: Check) -> CheckResult:
        watch = Stopwatch()
        try:
            async with asyncio.timeout(check.timeout + self._backstop_grace):
                return await self._probe(self._session, check)
        except TimeoutError:
            return watch.result("fail", f"timeout after {check.timeout:g}s (scheduler backstop)")


def first_offsets(checks: Sequence[Check], *, step: float) -> dict[str, float]:
    """When each check first runs, after the start: one `step` apart in their order, the step
    shrunk so that the whole first round fits in each check's interval."""
    count = len(checks)
    return {c.name: i * min(step, c.interval / count) for i, c in enumerate(checks)}


def spacing(check: Check, rng: random.Random) -> float:
    """Seconds from one run of `check` to its next: the interval, plus or minus its jitter."""
    jitter = check.interval * check.jitter
    return check.interval + rng.uniform(-jitter, jitter)
