"""Per-check state and its hysteresis: thresholds damp flapping, stale results turn unknown."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from sidecar.checks import Check
from sidecar.limits import MAX_AGE_MS
from sidecar.result import CheckResult

Status = Literal["pass", "warn", "fail", "unknown"]
STATUSES: frozenset[str] = frozenset({"pass", "warn", "fail", "unknown"})
STALE_INTERVALS = 2


@dataclass(frozen=True, slots=True)
class CheckState:
    """Where one check stands: its evaluated status and the evidence behind it."""

    check: Check
    status: Status = "unknown"
    result: CheckResult | None = None
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_success_at: float | None = None
    since: float | None = None  # when the status last changed (the result's end)
    previous: Status = "unknown"  # the status before that change

    @property
    def name(self) -> str:
        """The check's name."""
        return self.check.name

    def observe(self, result: CheckResult) -> CheckState:
        """The state after one more probe result.

        From `unknown` the first result decides at once. Between `pass` and `fail`, a change
        needs `failures_before_fail` failures or `successes_before_pass` successes in a row.
        """
        ok = result.status != "fail"
        failures = 0 if ok else self.consecutive_failures + 1
        successes = self.consecutive_successes + 1 if ok else 0
        if self.status == "unknown":
            status: Status = result.status
        elif ok:
            promoted = self.status != "fail" or successes >= self.check.successes_before_pass
            status = result.status if promoted else "fail"
        else:
            demoted = self.status == "fail" or failures >= self.check.failures_before_fail
            status = "fail" if demoted else self.status
        return replace(
            self,
            status=status,
            result=result,
            consecutive_failures=failures,
            consecutive_successes=successes,
            last_success_at=result.observed_at if ok else self.last_success_at,
            since=result.observed_at + result.latency if status != self.status else self.since,
            previous=self.status if status != self.status else self.previous,
        )

    @property
    def in_transition(self) -> bool:
        """True while the last result disagrees with the status: a failure not yet counted
        `failures_before_fail` times, or a pass after failing not yet `successes_before_pass`
        times in a row."""
        result = self.result
        if result is None or self.status == "unknown":
            return False
        return (result.status == "fail") != (self.status == "fail")

    def next_delay(self) -> float:
        """Seconds until the check's next run (before jitter): its fast interval while in
        transition (HAProxy's `fastinter`), so a verdict comes in seconds; else its interval."""
        check = self.check
        return min(check.fast_interval, check.interval) if self.in_transition else check.interval

    def is_stale(self, now: float) -> bool:
        """True when there is no result, or the last one finished more than two intervals ago
        (plus the timeout the probe now in flight may still take; plus one more interval for
        a shared check, whose result may come from another instance through Convex)."""
        if self.result is None:
            return True
        finished = self.result.observed_at + self.result.latency
        intervals = STALE_INTERVALS + (1 if self.check.shared else 0)
        return now - finished > intervals * self.check.interval + self.check.timeout

    def effective_status(self, now: float) -> Status:
        """The status to serve: `unknown` once the last result has gone stale."""
        return "unknown" if self.is_stale(now) else self.status


@dataclass(frozen=True, slots=True)
class Record:
    """A check's state as Convex keeps it. Times are ages in ms by the sender's clock: the
    deployment dates them by its own, so no clock but the server's decides freshness."""

    check: str
    fingerprint: str
    status: Status
    age_ms: float
    latency_ms: float
    output: str
    consecutive_failures: int
    consecutive_successes: int
    last_success_age_ms: float | None

    @property
    def essence(self) -> tuple[str, str, int, str]:
        """What makes a stored result worth rewriting when it changes (not its age, latency
        or run of successes, which change every round)."""
        return (self.fingerprint, self.status, self.consecutive_failures, self.output)


def record_of(state: CheckState, *, fingerprint: str, now: float) -> Record:
    """The state of a check that has a result, as the record to store (its status as served:
    a stale result is stored as `unknown`)."""
    result = state.result
    assert result is not None, "only checks with a result are stored"
    last = state.last_success_at
    return Record(
        check=state.name,
        fingerprint=fingerprint,
        status=state.effective_status(now),
        age_ms=_age_ms(now, result.observed_at),
        latency_ms=result.latency * 1000,
        output=result.output,
        consecutive_failures=state.consecutive_failures,
        consecutive_successes=state.consecutive_successes,
        last_success_age_ms=None if last is None else _age_ms(now, last),
    )


def probe_record(state: CheckState, *, fingerprint: str, now: float) -> Record:
    """A shared check's last probe result itself (not the status its thresholds made of it),
    for the other instances to observe through their own thresholds."""
    result = state.result
    assert result is not None, "only checks with a result are shared"
    return Record(
        check=state.name,
        fingerprint=fingerprint,
        status=result.status,
        age_ms=_age_ms(now, result.observed_at),
        latency_ms=result.latency * 1000,
        output=result.output,
        consecutive_failures=state.consecutive_failures,
        consecutive_successes=state.consecutive_successes,
        last_success_age_ms=None
        if state.last_success_at is None
        else _age_ms(now, state.last_success_at),
    )


def _age_ms(now: float, then: float) -> float:
    """How long ago, in ms; a day at most (the store's bound: older is old enough)."""
    return min(round(max(0.0, now - then) * 1000, 3), MAX_AGE_MS)
