"""Pure functions of the core modules, without a clock, a socket or a Monitor: the scheduler's
offsets and spacing, the fleet's verdicts, the sync's pace, the default of `panic`."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from pydantic import TypeAdapter

from sidecar.checks import KINDS, Check, HttpCheck, MastraCheck, TcpCheck, default_panic
from sidecar.fleet import NO_FLEET, Drain, FleetView, Outage
from sidecar.limits import MAX_HOLD_MS, MIN_HOLD_MS
from sidecar.result import CheckResult
from sidecar.scheduler import first_offsets, spacing
from sidecar.state import CheckState
from sidecar.sync import COALESCE, MIN_GAP, SyncTiming, _lease_ms

T0 = 1_800_000_000.0
CHECK: TypeAdapter[Check] = TypeAdapter(Check)
MASTRA = MastraCheck(name="mastra", target="http://m:4111", interval=10, timeout=2)


def tcp(name: str, interval: float = 10.0) -> TcpCheck:
    return TcpCheck(name=name, target="h:1", interval=interval, timeout=min(1.0, interval))


def failing(check: MastraCheck = MASTRA, *, since: float = T0) -> CheckState:
    """A check that passed and has failed since `since`."""
    result = CheckResult(status="fail", output="down", latency=0.01, observed_at=since)
    return CheckState(check=check, status="fail", result=result, since=since, previous="pass")


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


def test_shared_outage_needs_the_threshold_more_than_one_and_a_fresh_count() -> None:
    """A count of 3 of 5 at 0.5 excuses; 2 of 5 does not; 1 of 1 never does; a count older
    than two intervals plus the grace is void."""
    view = FleetView(threshold=0.5, grace=3.0, at=T0, outages={"mastra": Outage(3, 5)})
    state = failing()
    assert view.shared_outage(state, T0 + 1) == Outage(3, 5)
    assert replace(view, outages={"mastra": Outage(2, 5)}).shared_outage(state, T0 + 1) is None
    assert replace(view, outages={"mastra": Outage(1, 1)}).shared_outage(state, T0 + 1) is None
    assert view.shared_outage(state, T0 + 2 * 10 + 3.0) == Outage(3, 5)
    assert view.shared_outage(state, T0 + 2 * 10 + 3.1) is None
    assert NO_FLEET.shared_outage(state, T0) is None


def test_pending_covers_one_interval_plus_the_grace_after_a_pass() -> None:
    """A check that passed and just failed waits for the count; one that never passed does
    not."""
    view = FleetView(threshold=0.5, grace=3.0)
    assert view.pending(failing(), T0 + 13.0)
    assert not view.pending(failing(), T0 + 13.1)
    assert not view.pending(replace(failing(), previous="unknown"), T0 + 1)
    assert not view.pending(CheckState(check=MASTRA), T0)


def test_drained_until_its_end() -> None:
    """A drain counts until `until`; one without an end counts until removed."""
    drain = Drain(reason="maintenance", by="ops", until=T0 + 60)
    view = FleetView(threshold=0.5, grace=3.0, drain=drain)
    assert view.drained(T0 + 59) == drain
    assert view.drained(T0 + 60) is None
    forever = replace(view, drain=replace(drain, until=None))
    assert forever.drained(T0 + 10**6) is not None
    assert Outage(4, 5).describe("mastra") == "mastra failing on 4 of 5 instances"


def test_sync_grace_and_leases() -> None:
    """The grace is coalescing plus the gap between calls plus a call; a lease or hold is
    kept within what the functions accept (1 s to 1 h)."""
    assert SyncTiming(period=60, timeout=2).grace == pytest.approx(COALESCE + MIN_GAP + 2)
    assert _lease_ms(0.2) == MIN_HOLD_MS
    assert _lease_ms(25.0) == 25_000
    assert _lease_ms(10**6) == MAX_HOLD_MS


@pytest.mark.parametrize(
    ("name", "kind", "shared", "expected"),
    [
        ("convex", "convex", False, True),
        ("mastra", "mastra", False, True),
        ("payments", "http", False, False),
        ("payments", "http", True, True),
        ("db", "tcp", True, True),
        ("app", "http", False, False),
        ("app", "mastra", False, False),
    ],
)
def test_default_panic(name: str, kind: str, shared: bool, expected: bool) -> None:
    """True for convex, mastra and shared checks, false otherwise and always for `app`."""
    target = "h:1" if kind == "tcp" else "http://h"
    check = CHECK.validate_python({"name": name, "kind": kind, "target": target, "shared": shared})
    assert default_panic(check) is expected


def test_kinds_follow_the_check_union() -> None:
    """KINDS lists the union's kinds, in its order."""
    assert KINDS == ("convex", "mastra", "http", "tcp")
