"""Hysteresis and staleness of one check's state."""

from __future__ import annotations

import pytest

from sidecar.checks import HttpCheck
from sidecar.result import CheckResult
from sidecar.state import CheckState

T0 = 1_800_000_000.0


def check(fails: int = 2, passes: int = 2) -> HttpCheck:
    return HttpCheck(
        name="app",
        target="http://127.0.0.1:1",
        interval=10,
        timeout=2,
        failures_before_fail=fails,
        successes_before_pass=passes,
    )


def result(status: str, at: float = T0) -> CheckResult:
    return CheckResult(status=status, output=status, latency=0.01, observed_at=at)  # type: ignore[arg-type]


def run(state: CheckState, statuses: str) -> list[str]:
    """Feed results given as letters (p, f, w); return the status after each."""
    seen: list[str] = []
    for letter in statuses:
        state = state.observe(result({"p": "pass", "f": "fail", "w": "warn"}[letter]))
        seen.append(state.status)
    return seen


def test_first_result_decides_at_once() -> None:
    """From unknown, one result is enough either way."""
    assert run(CheckState(check=check()), "p") == ["pass"]
    assert run(CheckState(check=check()), "f") == ["fail"]


def test_failures_before_fail_damps_a_single_failure() -> None:
    """A passing check needs two failures in a row to turn fail; a pass in between resets."""
    assert run(CheckState(check=check()), "pfpff") == ["pass", "pass", "pass", "pass", "fail"]


def test_successes_before_pass_damps_recovery() -> None:
    """A failing check needs two passes in a row to recover."""
    assert run(CheckState(check=check()), "fpfpp") == ["fail", "fail", "fail", "fail", "pass"]


def test_thresholds_of_one_follow_every_result() -> None:
    """With both thresholds at 1 the status follows each result."""
    assert run(CheckState(check=check(1, 1)), "pfpf") == ["pass", "fail", "pass", "fail"]


def test_warn_counts_as_success() -> None:
    """A warn result keeps a check up and is shown as warn."""
    assert run(CheckState(check=check()), "pwp") == ["pass", "warn", "pass"]


def test_counters_and_last_success() -> None:
    """Consecutive counters and last success follow the results."""
    state = CheckState(check=check())
    state = state.observe(result("pass", T0)).observe(result("fail", T0 + 10))
    state = state.observe(result("fail", T0 + 20))
    assert (state.consecutive_failures, state.consecutive_successes) == (2, 0)
    assert state.last_success_at == T0


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, "pass"), (21.9, "pass"), (22.5, "unknown"), (1000, "unknown")],
)
def test_stale_after_two_intervals_plus_timeout(age: float, expected: str) -> None:
    """A result older than 2 intervals (+ the timeout of a probe in flight) turns unknown."""
    state = CheckState(check=check()).observe(result("pass", T0))
    assert state.effective_status(T0 + 0.01 + age) == expected


def test_no_result_is_unknown() -> None:
    """Before its first run a check is unknown."""
    assert CheckState(check=check()).effective_status(T0) == "unknown"


def test_output_is_clipped_in_utf16_units() -> None:
    """Probe output is cut to 1024 UTF-16 code units, Convex's measure, so a long output of
    characters outside the BMP can never make Convex refuse a whole report."""
    from sidecar.limits import MAX_OUTPUT
    from sidecar.result import Stopwatch

    text = Stopwatch().result("fail", "😀" * 1000).output
    assert len(text.encode("utf-16-le")) <= 2 * MAX_OUTPUT
    assert text.endswith("...")
    assert Stopwatch().result("pass", "short").output == "short"


def paces(state: CheckState, statuses: str) -> list[float]:
    """Feed results given as letters (p, f, w); return the delay before the next run after
    each (the check's interval is 10 s, its fast interval 1 s)."""
    seen: list[float] = []
    for letter in statuses:
        state = state.observe(result({"p": "pass", "f": "fail", "w": "warn"}[letter]))
        seen.append(state.next_delay())
    return seen


def test_a_check_in_transition_runs_again_at_its_fast_interval() -> None:
    """A failure not yet counted `failures_before_fail` times, and a pass after failing not
    yet counted `successes_before_pass` times, bring the next run to the fast interval; a
    settled status, either way, keeps the interval (HAProxy's fastinter)."""
    fast = CheckState(check=check(3, 2).model_copy(update={"fast_interval": 1.0}))
    assert paces(fast, "pffffppp") == [10, 1, 1, 10, 10, 1, 10, 10]
    assert paces(fast, "pfpw") == [10, 1, 10, 10]  # a pass in between settles it again
    assert paces(fast, "f") == [10]  # the first result decides at once: nothing to confirm


def test_no_transition_before_a_result_or_with_thresholds_of_one() -> None:
    """No result, or thresholds of one (every result decides): never in transition."""
    assert not CheckState(check=check()).in_transition
    assert CheckState(check=check()).next_delay() == 10
    assert paces(CheckState(check=check(1, 1)), "pfpf") == [10, 10, 10, 10]


def test_the_fast_interval_never_exceeds_the_interval() -> None:
    """A check built with a fast interval above its interval (the settings never resolve one
    so) runs in transition at its interval."""
    slow = check(3, 2).model_copy(update={"interval": 0.5, "fast_interval": 1.0})
    state = CheckState(check=slow).observe(result("pass")).observe(result("fail"))
    assert state.in_transition
    assert state.next_delay() == 0.5
