"""The scheduler: first round at once, concurrency, supervision of crashed loops, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from sidecar.checks import Check, HttpCheck, TcpCheck
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.result import CheckResult, Stopwatch
from sidecar.scheduler import Scheduler, first_offsets, spacing
from sidecar.state import CheckState
from tests.support import faults


def http(name: str, url: str, interval: float = 0.2, timeout: float = 0.15) -> HttpCheck:
    return HttpCheck(name=name, target=url, interval=interval, timeout=timeout, jitter=0)


def monitored(checks: list[Check], **kw: Any) -> tuple[Monitor, Metrics]:
    metrics = Metrics(checks=[c.name for c in checks], version="0")
    return Monitor(instance="t", version="0", checks=checks, metrics=metrics, **kw), metrics


@contextlib.asynccontextmanager
async def scheduling(
    watched: tuple[Monitor, Metrics], checks: list[Check], **kw: Any
) -> AsyncIterator[Scheduler]:
    monitor, metrics = watched
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(
            monitor=monitor, metrics=metrics, session=session, checks=checks, **kw
        )
        task = asyncio.create_task(scheduler.run())
        try:
            yield scheduler
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def runs(metrics: Metrics, check: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "sidecar_check_runs_total", {"check": check, "result": result}
    )
    return value or 0.0


async def test_first_round_at_once_and_one_hung_check_delays_nothing() -> None:
    """A good and a hung check: the good one passes within milliseconds of the start and
    keeps its pace while the hung one times out each round."""
    async with (
        faults.fault_server(faults.respond(200, b"ok")) as good,
        faults.fault_server(faults.hang()) as hung,
    ):
        checks: list[Check] = [http("good", good.url), http("hung", hung.url)]
        monitor, metrics = monitored(checks)
        async with scheduling((monitor, metrics), checks):
            started = time.monotonic()
            async with asyncio.timeout(1):
                while monitor.snapshot.statuses["good"] != "pass":
                    await monitor.changed.wait()
                    monitor.changed.clear()
            assert time.monotonic() - started < 0.1
            await asyncio.sleep(1.05)
        assert runs(metrics, "good", "pass") >= 5
        assert runs(metrics, "hung", "fail") >= 4
        assert monitor.snapshot.statuses["hung"] == "fail"


async def test_crashed_loop_is_logged_counted_and_restarted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A probe that raises (a bug) crashes its loop: the supervisor counts it, logs it and
    starts the loop again, and the other check never notices."""
    calls = {"boom": 0}

    async def probe(session: aiohttp.ClientSession, check: Check) -> CheckResult:
        if check.name == "boom":
            calls["boom"] += 1
            raise RuntimeError("probe bug")
        return Stopwatch().result("pass", "fine")

    checks: list[Check] = [
        http("boom", "http://127.0.0.1:9"),
        http("fine", "http://127.0.0.1:9", interval=0.02, timeout=0.01),
    ]
    watched = monitored(checks)
    async with scheduling(watched, checks, probe=probe, tick=0.05):
        await asyncio.sleep(0.4)
    metrics = watched[1]
    crashes = metrics.registry.get_sample_value("sidecar_check_crashes_total", {"check": "boom"})
    assert crashes is not None
    assert crashes >= 2
    assert calls["boom"] >= 3
    assert runs(metrics, "fine", "pass") >= 10
    assert "check loop crashed; restarting" in capsys.readouterr().out


async def test_scheduler_backstop_bounds_a_probe_that_ignores_its_timeout() -> None:
    """A probe that never returns is cut off by the scheduler's backstop and counted as fail."""

    async def probe(session: aiohttp.ClientSession, check: Check) -> CheckResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    checks: list[Check] = [http("stuck", "http://127.0.0.1:9", interval=2, timeout=0.1)]
    monitor, metrics = monitored(checks)
    async with scheduling((monitor, metrics), checks, probe=probe, backstop_grace=0.05):
        await asyncio.sleep(0.4)
    assert monitor.snapshot.statuses["stuck"] == "fail"


async def test_heartbeat_drives_live() -> None:
    """/live follows the heartbeat: fresh while the scheduler runs, stale once it stops."""
    now = [1000.0]
    checks: list[Check] = [http("a", "http://127.0.0.1:9")]
    monitor, _ = monitored(checks, monotonic=lambda: now[0])
    assert monitor.live()
    now[0] += 4.9
    assert monitor.live()
    now[0] += 0.2
    assert not monitor.live()
    monitor.heartbeat()
    assert monitor.live()


async def test_first_round_is_staggered_and_each_check_keeps_its_place() -> None:
    """Twenty checks start one step apart, in their configured order, not all at once; the
    step shrinks so that the whole first round fits in one interval; the second round keeps
    the same order and spacing."""
    starts: dict[str, list[float]] = {}

    async def probe(session: aiohttp.ClientSession, check: Check) -> CheckResult:
        starts.setdefault(check.name, []).append(time.monotonic())
        return Stopwatch().result("pass", "ok")

    checks: list[Check] = [http(f"c{i:02d}", "http://127.0.0.1:1", interval=0.5) for i in range(20)]
    watched = monitored(checks)
    async with scheduling(watched, checks, probe=probe, first_round_step=0.04):
        await asyncio.sleep(1.15)
    names = [c.name for c in checks]
    firsts = [starts[name][0] for name in names]
    seconds = [starts[name][1] for name in names]
    step = 0.5 / 20  # 0.04 s would not fit 20 checks in a 0.5 s interval
    assert firsts == sorted(firsts)
    # A sleep never ends early: the last check cannot start before 19 steps have passed
    # (less a first start that came late on a busy machine).
    assert firsts[-1] - firsts[0] >= 19 * step - 0.05
    assert firsts[-1] - firsts[0] < 0.5
    assert all(abs((s - f) - 0.5) < 0.2 for f, s in zip(firsts, seconds, strict=True))


def scripted(plan: str) -> tuple[Any, list[tuple[str, float]]]:
    """A probe that answers the letters of `plan` in turn (p: pass, f: fail), then repeats the
    last one, and the (check, start time) of every run."""
    starts: list[tuple[str, float]] = []

    async def probe(session: aiohttp.ClientSession, check: Check) -> CheckResult:
        letter = plan[min(len(starts), len(plan) - 1)]
        starts.append((check.name, time.monotonic()))
        return Stopwatch().result("pass" if letter == "p" else "fail", letter)

    return probe, starts


async def settled(monitor: Monitor) -> None:
    """Wait (at most 2 s) until every check has its first result."""
    async with asyncio.timeout(2):
        while "unknown" in monitor.snapshot.statuses.values():
            await monitor.changed.wait()
            monitor.changed.clear()


def slow(name: str, *, fast: float, fails: int = 3, jitter: float = 0.0) -> HttpCheck:
    """A check every 10 s with a fast interval of `fast`."""
    return HttpCheck(
        name=name,
        target="http://127.0.0.1:9",
        interval=10,
        fast_interval=fast,
        timeout=0.1,
        jitter=jitter,
        failures_before_fail=fails,
    )


async def test_a_check_in_transition_is_probed_at_its_fast_interval() -> None:
    """A 10 s check that passed (restored at start) with a 0.2 s fast interval and three
    failures before fail: after its first failure it runs every 0.2 s until the third turns
    it fail (within a second, not 30 s), then goes back to its interval (no more runs in the
    next second)."""
    probe, starts = scripted("f")
    checks: list[Check] = [slow("moving", fast=0.2)]
    monitor, metrics = monitored(checks)
    monitor.restore([CheckState(check=checks[0]).observe(Stopwatch().result("pass", "ok"))])
    async with scheduling((monitor, metrics), checks, probe=probe):
        async with asyncio.timeout(3):
            while monitor.snapshot.statuses["moving"] != "fail":
                await monitor.changed.wait()
                monitor.changed.clear()
        settled = len(starts)
        await asyncio.sleep(1.0)
    times = [t for _, t in starts]
    assert settled == 3  # three failures: the third turns it fail
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.15 <= gap < 1.0 for gap in gaps), gaps  # the fast interval, not 10 s
    assert len(starts) == settled  # settled: back to its 10 s interval


async def test_hurry_runs_a_check_at_once_at_most_once_per_fast_interval() -> None:
    """`hurry` wakes a 10 s check's loop: it runs again within milliseconds; a second hurry
    within the fast interval (0.3 s) is kept for the end of it (not dropped, not sooner); an
    unknown check is refused. Hurried without pause for 1.2 s, it runs at most once per fast
    interval, and about that often."""
    probe, starts = scripted("p")
    checks: list[Check] = [slow("db", fast=0.3)]
    monitor, metrics = monitored(checks)
    async with scheduling((monitor, metrics), checks, probe=probe) as scheduler:
        await settled(monitor)
        await asyncio.sleep(0.35)
        assert scheduler.hurry("db")
        await asyncio.sleep(0.05)
        assert len(starts) == 2
        assert starts[1][1] - starts[0][1] >= 0.3
        assert scheduler.hurry("db")  # within a fast interval of the last start: kept
        assert not scheduler.hurry("db")  # already hurried as soon
        assert not scheduler.hurry("nobody")
        for _ in range(200):  # until the kept hurry ran (its interval is 10 s): at most ~2 s
            if len(starts) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(starts) == 3
        assert 0.3 <= starts[2][1] - starts[1][1] < 2.0  # the fast interval's end, not sooner
        before, began = len(starts), time.monotonic()
        for _ in range(120):  # 1.2 s, or more on a busy machine
            scheduler.hurry("db")
            await asyncio.sleep(0.01)
        spent = time.monotonic() - began
    times = [t for _, t in starts]
    assert 3 <= len(starts) - before <= spent / 0.3 + 1, times  # once per fast interval
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(times)), times


async def test_hurried_checks_spread_over_their_jitter() -> None:
    """Ten checks hurried at the same moment (jitter 0.5, fast interval 0.4 s) start within
    0.2 s of it, not all in the same instant: a fleet told at once does not probe in lock
    step."""
    probe, starts = scripted("p")
    checks: list[Check] = [slow(f"c{i}", fast=0.4, jitter=0.5) for i in range(10)]
    monitor, metrics = monitored(checks)
    async with scheduling((monitor, metrics), checks, probe=probe) as scheduler:
        await settled(monitor)
        await asyncio.sleep(0.45)
        told = time.monotonic()
        assert all(scheduler.hurry(c.name) for c in checks)
        await asyncio.sleep(0.4)
    hurried = [t - told for _, t in starts[10:]]
    assert len(hurried) == 10
    assert all(0 <= delay <= 0.2 + 0.05 for delay in hurried), hurried
    assert max(hurried) - min(hurried) > 0.02, hurried


# The pure pieces ---------------------------------------------------------------------------


def tcp(name: str, interval: float = 10.0) -> TcpCheck:
    return TcpCheck(name=name, target="h:1", interval=interval, timeout=min(1.0, interval))


def test_first_offsets_are_one_step_apart_in_order() -> None:
    """Three checks start 10 ms apart, in their configured order."""
    offsets = first_offsets([tcp("a"), tcp("b"), tcp("c")], step=0.01)
    assert offsets == pytest.approx({"a": 0.0, "b": 0.01, "c": 0.02})
    assert list(offsets) == ["a", "b", "c"]


def test_first_offsets_shrink_to_fit_the_interval() -> None:
    """Twenty checks of a 0.1 s interval cannot start 10 ms apart (0.19 s): the step becomes
    the interval over the count, per check."""
    checks = [tcp(f"c{i}", interval=0.1) for i in range(20)]
    offsets = first_offsets(checks, step=0.01)
    assert offsets["c19"] == pytest.approx(19 * 0.1 / 20)
    assert max(offsets.values()) < 0.1
    assert first_offsets([], step=0.01) == {}


def test_spacing_stays_within_the_jitter() -> None:
    """A 10 s check with 10% jitter comes back after 9 to 11 s; without jitter exactly 10; in
    transition, its fast interval (1 s) with the same fraction of jitter."""
    rng = random.Random(7)
    jittered = HttpCheck(name="a", target="http://h", interval=10, timeout=1, jitter=0.1)
    gaps = [spacing(CheckState(check=jittered), rng) for _ in range(500)]
    assert all(9.0 <= gap <= 11.0 for gap in gaps)
    assert max(gaps) - min(gaps) > 1.0  # it does vary
    steady = jittered.model_copy(update={"jitter": 0.0})
    assert spacing(CheckState(check=steady), rng) == 10.0
    passed = CheckState(check=jittered).observe(Stopwatch().result("pass", "ok"))
    moving = passed.observe(Stopwatch().result("fail", "down"))
    fast = [spacing(moving, rng) for _ in range(500)]
    assert all(0.9 <= gap <= 1.1 for gap in fast)
