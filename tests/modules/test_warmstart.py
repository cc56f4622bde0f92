"""The warm start: its rule (`restorable`, a pure function: which stored records a restarted
daemon may serve before its own first probe of them), and the step that applies it to the
Monitor once the first sync answers."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.checks import Check, HttpCheck, MastraCheck
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.state import CheckState, Record, record_of
from sidecar.store.messages import Warm
from sidecar.store.signing import fingerprint
from sidecar.warmstart import WarmStart, restorable

NOW = 1_800_000_000.0
SECRET = "test-secret-0123456789"
MASTRA = MastraCheck(name="mastra", target="http://mastra:4111", interval=10, timeout=2)
APP = HttpCheck(name="app", target="http://127.0.0.1:3000/api/health", interval=10, timeout=2)


def fp(check: Check) -> str:
    return fingerprint(SECRET, check.definition())


def stored(check: Check, **changes: Any) -> Record:
    fields: dict[str, Any] = {
        "check": check.name,
        "fingerprint": fp(check),
        "status": "pass",
        "age_ms": 60_000.0,
        "latency_ms": 12.5,
        "output": "health: success",
        "consecutive_failures": 0,
        "consecutive_successes": 7,
        "last_success_age_ms": 5_000.0,
    }
    return Record(**{**fields, **changes})


def restore(
    records: list[Record], *, confirmed_age: float = 3.0, checks: tuple[Check, ...] = (MASTRA,)
) -> list[CheckState]:
    return restorable(
        [CheckState(check=c) for c in checks],
        records,
        confirmed_age=confirmed_age,
        fingerprints={c.name: fp(c) for c in checks},
        now=NOW,
    )


def test_fresh_passing_dependency_is_restored_as_of_the_last_sync() -> None:
    """A passing mastra record confirmed 3 s ago is served as a result observed 3 s ago."""
    [state] = restore([stored(MASTRA)])
    assert state.status == "pass"
    assert state.result is not None
    assert state.result.observed_at == NOW - 3.0
    assert state.last_success_at == NOW - 3.0
    assert state.result.output == "health: success"
    assert state.consecutive_successes == 7
    assert state.effective_status(NOW) == "pass"


def test_stale_confirmation_is_not_restored() -> None:
    """Confirmed longer ago than two intervals plus the timeout (22 s): stale, not restored."""
    assert restore([stored(MASTRA)], confirmed_age=22.5) == []
    assert len(restore([stored(MASTRA)], confirmed_age=21.5)) == 1


def test_failing_or_unknown_records_are_not_restored() -> None:
    """Only a pass counts: a restored failure would take the instance out for nothing."""
    assert restore([stored(MASTRA, status="fail")]) == []
    assert restore([stored(MASTRA, status="unknown")]) == []
    assert restore([stored(MASTRA, status="warn")]) == []


def test_changed_definition_is_not_restored() -> None:
    """MASTRA_URL now points elsewhere: the stored pass was about another server."""
    moved = MASTRA.model_copy(update={"target": "http://10.9.9.9:4111"})
    [record] = [stored(MASTRA)]
    assert restore([record], checks=(moved,)) == []
    # Options that do not change what is probed keep the fingerprint.
    slower = MASTRA.model_copy(update={"interval": 30.0, "critical": False})
    assert fp(slower) == fp(MASTRA)
    assert len(restore([record], checks=(slower,))) == 1


def test_expected_agents_change_the_definition() -> None:
    """expect_agents changes what is probed, so it changes the fingerprint."""
    agents = MASTRA.model_copy(update={"expect_agents": ("assistant",)})
    assert fp(agents) != fp(MASTRA)


def test_header_values_change_the_fingerprint_without_showing_in_it() -> None:
    """A new token in a header is a new definition; the fingerprint is keyed by the secret,
    so it cannot be checked against guessed tokens without it."""
    a = APP.model_copy(update={"headers": {"Authorization": "Bearer one-token-000000"}})
    b = APP.model_copy(update={"headers": {"Authorization": "Bearer two-token-000000"}})
    assert fp(a) != fp(b)
    assert fingerprint("another-secret-0123456", a.definition()) != fp(a)
    assert len(fp(a)) == 16


def test_checks_of_the_container_beside_always_run_first() -> None:
    """An http check (the app beside) is never restored, however fresh."""
    assert restore([stored(APP)], checks=(APP,)) == []


def test_record_of_dates_by_age_and_stores_stale_as_unknown() -> None:
    """The stored record carries ages (the server dates them by its clock) and the status
    as served: a result gone stale is stored as unknown."""
    state = CheckState(check=MASTRA).observe(
        restore([stored(MASTRA)])[0].result  # type: ignore[arg-type]
    )
    record = record_of(state, fingerprint="f", now=NOW)
    assert record.age_ms == 3000.0
    assert record.status == "pass"
    later = record_of(state, fingerprint="f", now=NOW + 30)
    assert later.status == "unknown"
    assert later.essence != record.essence


# The step -------------------------------------------------------------------------------------


def monitor() -> Monitor:
    checks: list[Check] = [MASTRA, APP]
    metrics = Metrics(checks=[c.name for c in checks], version="0")
    return Monitor(instance="i", version="0", checks=checks, metrics=metrics, clock=lambda: NOW)


def test_restores_fresh_dependency_results(capsys: pytest.CaptureFixture[str]) -> None:
    """Stored passes of mastra and app confirmed 2 s ago: mastra is served as pass at once,
    the app (the container beside) stays unknown until its own first probe."""
    m = monitor()
    WarmStart(monitor=m, fingerprints={c.name: fp(c) for c in (MASTRA, APP)}, clock=lambda: NOW)(
        Warm(confirmed_age_ms=2000.0, records=(stored(MASTRA), stored(APP)))
    )
    assert m.snapshot.statuses == {"mastra": "pass", "app": "unknown"}
    [line] = [line for line in capsys.readouterr().out.splitlines() if "warm start" in line]
    assert "mastra" in line
    assert "app" not in line


def test_stale_or_failing_records_restore_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Confirmed too long ago, or a stored failure: the Monitor is untouched, nothing logged."""
    m = monitor()
    before = m.snapshot
    step = WarmStart(
        monitor=m, fingerprints={c.name: fp(c) for c in (MASTRA, APP)}, clock=lambda: NOW
    )
    step(Warm(confirmed_age_ms=60_000.0, records=(stored(MASTRA),)))
    step(Warm(confirmed_age_ms=1000.0, records=(stored(MASTRA, status="fail"),)))
    assert m.snapshot is before
    assert "warm start" not in capsys.readouterr().out
