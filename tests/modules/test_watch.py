"""The subscription's pure parts: the deployment's clock against this instance's, a
`health:watch` value as fleet facts, which panic checks a verdict hurries, and values this
version does not understand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sidecar.checks import HttpCheck, MastraCheck
from sidecar.fleet import Drain, FleetView, Verdict, Watched
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.result import CheckResult
from sidecar.store.errors import BadResponse
from sidecar.store.messages import WatchAnswer, WatchedDrain, WatchedVerdict, watch_answer
from sidecar.watch import ServerClock, to_hurry, watched_of

T0 = 1_800_000_000.0
MASTRA = MastraCheck(name="mastra", target="http://m:4111", interval=10, timeout=2, panic=True)
APP = HttpCheck(name="app", target="http://127.0.0.1:3000", interval=10, timeout=2, panic=False)


def test_the_offset_is_taken_at_the_middle_of_the_round_trip() -> None:
    """A sync sent at T0 and answered at T0 + 0.2 with the deployment's `now` 5 s ahead of
    T0 + 0.1: deployment times read 5 s earlier here, to the ms."""
    clock = ServerClock.learn(now_ms=(T0 + 5.1) * 1000, sent=T0, received=T0 + 0.2)
    assert clock.offset_ms == pytest.approx(5000.0)
    assert clock.local((T0 + 65) * 1000) == pytest.approx(T0 + 60)
    behind = ServerClock.learn(now_ms=(T0 - 2) * 1000, sent=T0, received=T0)
    assert behind.local((T0 + 8) * 1000) == pytest.approx(T0 + 10)


def test_a_value_becomes_fleet_facts_by_this_instances_clock() -> None:
    """The drain's end and each verdict's `since` are converted; the value's wire shape is
    Convex's (every number a float)."""
    value = {
        "drain": {"reason": "deploy", "by": "ops", "key": "operator", "at": 1.0e6, "until": 7.0e6},
        "verdicts": [{"check": "mastra", "failing": 3.0, "live": 5.0, "since": 2.0e6}],
        "shared": [{"check": "db", "status": "pass", "since": 1.0e6}],
    }
    answer = watch_answer(value)
    assert answer == WatchAnswer(
        drain=WatchedDrain(reason="deploy", by="ops", at_ms=1.0e6, until_ms=7.0e6),
        verdicts=(WatchedVerdict(check="mastra", failing=3, live=5, since_ms=2.0e6),),
    )
    facts = watched_of(answer, clock=ServerClock(offset_ms=1.0e6), at=T0)
    assert facts == Watched(
        at=T0,
        subscribed=True,
        drain=Drain(reason="deploy", by="ops", since=1000.0, until=6000.0),
        verdicts={"mastra": Verdict(failing=3, live=5, since=1000.0)},
    )
    none = watch_answer({"drain": None, "verdicts": [], "shared": []})
    assert watched_of(none, clock=ServerClock(0.0), at=T0).drain is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"drain": None},
        {"drain": "x", "verdicts": []},
        {"drain": None, "verdicts": [{"check": "mastra", "failing": "3", "live": 5, "since": 1}]},
        {"drain": {"reason": "r", "by": "b", "at": 1, "until": "never"}, "verdicts": []},
    ],
)
def test_a_value_of_another_shape_is_refused(value: object) -> None:
    """Anything but the contract's shape is a BadResponse (the watch then falls back to
    polling), never a half-read value."""
    with pytest.raises(BadResponse):
        watch_answer(value)


def test_a_changed_verdict_of_another_instance_hurries_a_passing_panic_check() -> None:
    """Verdict mastra 1 of 5 (another instance), mastra passing here: hurried; the same
    verdict again (a drain re-ran the query): not; failing here already, or a non-panic
    check, or a verdict of no one failing: not. Failing here, a count that falls (the others
    recover): hurried."""
    metrics = Metrics(checks=["mastra", "app"], version="0")
    m = Monitor(
        instance="i",
        version="0",
        checks=(MASTRA, APP),
        metrics=metrics,
        fleet=FleetView(threshold=0.5, grace=3.0),
    )
    for name in ("mastra", "app"):
        m.record(name, CheckResult(status="pass", output="", latency=0.01, observed_at=T0))
    one = Watched(at=T0, subscribed=True, verdicts={"mastra": Verdict(1, 5, since=T0)})
    assert to_hurry({}, one, m.snapshot) == ("mastra",)
    assert to_hurry(one.verdicts, one, m.snapshot) == ()
    two = replace(one, verdicts={"mastra": Verdict(2, 5, since=T0 + 1)})
    assert to_hurry(one.verdicts, two, m.snapshot) == ("mastra",)
    nobody = replace(one, verdicts={"mastra": Verdict(0, 5, since=T0 + 2)})
    assert to_hurry(two.verdicts, nobody, m.snapshot) == ()
    app = replace(one, verdicts={"app": Verdict(3, 5, since=T0)})
    assert to_hurry({}, app, m.snapshot) == ()
    for _ in range(2):
        m.record("mastra", CheckResult(status="fail", output="", latency=0.01, observed_at=T0))
    assert m.snapshot.statuses["mastra"] == "fail"
    assert to_hurry({}, two, m.snapshot) == ()
    assert to_hurry(one.verdicts, two, m.snapshot) == ()  # more fail: nothing new here
    # Failing here, the count falls (the others recover): probe again at once.
    assert to_hurry(two.verdicts, one, m.snapshot) == ("mastra",)
    assert to_hurry(two.verdicts, nobody, m.snapshot) == ("mastra",)
