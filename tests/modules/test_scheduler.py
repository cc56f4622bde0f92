"""The scheduler: first round at once, concurrency, supervision of crashed loops, heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
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
from tests.support import faults


def http(name: str, url: str, interval: float = 0.2, timeout: float = 0.15) -> HttpCheck:
    return HttpCheck(name=name, target=url, interval=interval, timeout=timeout, jitter=0)


def monitored(checks: list[Check], **kw: Any) -> tuple[Monitor, Metrics]:
    metrics = Metrics(checks=[c.name for c in checks], version="0")
    return Monitor(instance="t", version="0", checks=checks, metrics=metrics, **kw), metrics


@contextlib.asynccontextmanager
async def scheduling(
    watched: tuple[Monitor, Metrics], checks: list[Check], **kw: Any
) -> AsyncIterator[None]:
    monitor, metrics = watched
    async with aiohttp.ClientSession() as session:
        scheduler = Scheduler(
            monitor=monitor, metrics=metrics, session=session, checks=checks, **kw
        )
        task = asyncio.create_task(scheduler.run())
        try:
            yield
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
    """A 10 s check with 10% jitter comes back after 9 to 11 s; without jitter exactly 10."""
    rng = random.Random(7)
    jittered = HttpCheck(name="a", target="http://h", interval=10, timeout=1, jitter=0.1)
    gaps = [spacing(jittered, rng) for _ in range(500)]
    assert all(9.0 <= gap <= 11.0 for gap in gaps)
    assert max(gaps) - min(gaps) > 1.0  # it does vary
    steady = jittered.model_copy(update={"jitter": 0.0})
    assert spacing(steady, rng) == 10.0
