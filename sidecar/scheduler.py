"""Runs every check at its own pace, concurrently, and keeps the heartbeat.

Each check has its own task: a hung dependency delays nothing else. The check's state says when
it runs next (its interval, or its fast interval while in transition: `CheckState.next_delay`);
`hurry` brings a run forward when the fleet reports the check failing elsewhere. A supervisor
restarts a check task that crashed (logged and counted) and beats the heartbeat that `/live`
reads.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sidecar.state import CheckState

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
        # `hurry`'s door into each loop: the event wakes it, `_hurried` says when to run.
        self._wakes = {name: asyncio.Event() for name in self._checks}
        self._hurried: dict[str, float] = {}
        self._started: dict[str, float] = {}  # when each check's last probe started
        self._running: set[str] = set()  # checks whose probe is in flight

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

    def hurry(self, name: str) -> bool:
        """Run check `name` soon (another instance reports it failing, or recovering): within
        its jitter times its fast interval, so that a fleet told at once does not probe in lock
        step; and never sooner than one fast interval after its last start, the pace the
        probe-rate bound counts: a hurry within that (or while its probe runs) is kept for
        then, not dropped, for the news it brings is newer than the probe. False for a check
        this instance does not have, or one already hurried as soon."""
        check = self._checks.get(name)
        if check is None:
            return False
        fast = min(check.fast_interval, check.interval)
        earliest = max(time.monotonic(), self._started.get(name, float("-inf")) + fast)
        at = earliest + self._rng.uniform(0, check.jitter * fast)
        if self._hurried.get(name, float("inf")) <= at:
            return False
        self._hurried[name] = at
        self._wakes[name].set()
        return True

    async def _loop(self, check: Check, delay: float) -> None:
        """Probe `check` forever: after `delay`, then as its state says (with jitter, without
        drift), or sooner when hurried."""
        name = check.name
        next_at = time.monotonic() + delay
        while True:
            started = await self._until(name, next_at)
            if self._monitor.snapshot.probes(check):  # else another instance does
                self._started[name] = time.monotonic()
                self._running.add(name)
                try:
                    result = await self._run(check)
                finally:
                    self._running.discard(name)
                self._monitor.record(name, result)
            next_at = started + spacing(self._monitor.state(name), self._rng)
            # A probe slower than its interval does not make the next ones pile up.
            next_at = max(next_at, time.monotonic())

    async def _until(self, name: str, at: float) -> float:
        """Sleep until `at` (monotonic), or the sooner time `hurry` sets; return that time."""
        wake = self._wakes[name]
        while (left := at - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await wake.wait()
            if wake.is_set():
                wake.clear()
                at = min(at, self._hurried.pop(name, at))
        return at

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


def spacing(state: CheckState, rng: random.Random) -> float:
    """Seconds from one run of a check to its next: what its state asks for (the interval, or
    the fast interval in transition), plus or minus its jitter."""
    delay = state.next_delay()
    jitter = delay * state.check.jitter
    return delay + rng.uniform(-jitter, jitter)
