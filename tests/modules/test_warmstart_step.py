"""The warm start as its own step: handed the first sync answer's stored results, it restores
the Monitor's fresh passing dependency checks and logs which (nothing else)."""

from __future__ import annotations

import pytest

from sidecar.checks import Check, HttpCheck, MastraCheck
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.state import Record
from sidecar.store.messages import Warm
from sidecar.warmstart import WarmStart

NOW = 1_800_000_000.0
MASTRA = MastraCheck(name="mastra", target="http://mastra:4111", interval=10, timeout=2)
APP = HttpCheck(name="app", target="http://127.0.0.1:3000", interval=10, timeout=2)
FINGERPRINTS = {"mastra": "f-mastra", "app": "f-app"}


def record(check: str, status: str = "pass") -> Record:
    return Record(
        check=check,
        fingerprint=FINGERPRINTS[check],
        status=status,  # type: ignore[arg-type]
        age_ms=60_000.0,
        latency_ms=12.0,
        output="ok",
        consecutive_failures=0,
        consecutive_successes=3,
        last_success_age_ms=0.0,
    )


def monitor() -> Monitor:
    checks: list[Check] = [MASTRA, APP]
    metrics = Metrics(checks=[c.name for c in checks], version="0")
    return Monitor(instance="i", version="0", checks=checks, metrics=metrics, clock=lambda: NOW)


def test_restores_fresh_dependency_results(capsys: pytest.CaptureFixture[str]) -> None:
    """Stored passes of mastra and app confirmed 2 s ago: mastra is served as pass at once,
    the app (the container beside) stays unknown until its own first probe."""
    m = monitor()
    WarmStart(monitor=m, fingerprints=FINGERPRINTS, clock=lambda: NOW)(
        Warm(confirmed_age_ms=2000.0, records=(record("mastra"), record("app")))
    )
    assert m.snapshot.statuses == {"mastra": "pass", "app": "unknown"}
    [line] = [line for line in capsys.readouterr().out.splitlines() if "warm start" in line]
    assert "mastra" in line
    assert "app" not in line


def test_stale_or_failing_records_restore_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """Confirmed too long ago, or a stored failure: the Monitor is untouched, nothing logged."""
    m = monitor()
    before = m.snapshot
    step = WarmStart(monitor=m, fingerprints=FINGERPRINTS, clock=lambda: NOW)
    step(Warm(confirmed_age_ms=60_000.0, records=(record("mastra"),)))
    step(Warm(confirmed_age_ms=1000.0, records=(record("mastra", status="fail"),)))
    assert m.snapshot is before
    assert "warm start" not in capsys.readouterr().out
