"""Keeps the results in Convex: one `health:report` per round, and the warm start on boot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import TypeVar

from sidecar import logs
from sidecar.monitor import Monitor
from sidecar.probes.result import CheckResult
from sidecar.snapshot import StoreState
from sidecar.state import CheckState
from sidecar.store import CheckRecord, HealthStore, StoredResult, StoreError

T = TypeVar("T")
# Dependency checks may be restored from Convex; checks of the container beside always run.
WARM_KINDS = frozenset({"convex", "mastra"})
MIN_PERIOD = 1.0


class Reporter:
    """Writes the Snapshot's results to Convex; a store failure never stops probing."""

    def __init__(self, *, monitor: Monitor, store: HealthStore, period: float) -> None:
        self._monitor = monitor
        self._store = store
        self._period = max(period, MIN_PERIOD)
        self._log = logs.get("store")

    async def warm_start(self) -> frozenset[str]:
        """Restore fresh, passing dependency results of this instance; return their names."""
        now = time.time()
        rows = await self._call("instance", self._store.instance_results(now_ms=now * 1000))
        if rows is None:
            return frozenset()
        states = restorable(self._monitor.snapshot.states, rows, now)
        if states:
            self._monitor.restore(states)
            self._log.info("warm start", checks=sorted(s.name for s in states))
        return frozenset(s.name for s in states)

    async def run(self) -> None:
        """Report every round of results until cancelled (at most one call per period)."""
        while True:
            await self._monitor.changed.wait()
            self._monitor.changed.clear()
            try:
                await self.report_once()
            except Exception:  # a bug must not end reporting: the next round tries again
                self._log.exception("report failed unexpectedly")
            await asyncio.sleep(self._period)

    async def report_once(self) -> None:
        """Write every check that has a result, in one `health:report` call."""
        records = [record(s) for s in self._monitor.snapshot.states if s.result is not None]
        if records:
            await self._call("report", self._store.report(records, now_ms=time.time() * 1000))

    async def _call(self, op: str, call: Awaitable[T]) -> T | None:
        """Await one store call; count it, time it, and turn its outcome into the store state."""
        metrics = self._monitor.metrics
        started = time.monotonic()
        try:
            value = await call
        except StoreError as exc:
            metrics.store_requests.labels(op=op, result=exc.kind).inc()
            self._monitor.set_store(
                StoreState(status="error", kind=exc.kind, message=str(exc)[:300])
            )
            return None
        finally:
            metrics.store_duration.labels(op=op).observe(time.monotonic() - started)
        metrics.store_requests.labels(op=op, result="ok").inc()
        self._monitor.set_store(StoreState(status="ok"))
        return value


def record(state: CheckState) -> CheckRecord:
    """A check's state as the row `health:report` keeps."""
    result = state.result
    assert result is not None
    return CheckRecord(
        check=state.name,
        status=state.status,
        observed_at_ms=result.observed_at * 1000,
        latency_ms=result.latency * 1000,
        output=result.output,
        consecutive_failures=state.consecutive_failures,
        consecutive_successes=state.consecutive_successes,
        last_success_at_ms=None if state.last_success_at is None else state.last_success_at * 1000,
    )


def restorable(
    states: Sequence[CheckState], rows: Sequence[StoredResult], now: float
) -> list[CheckState]:
    """The states a warm start may take: passing, fresh rows of dependency checks whose
    kind still matches the configuration."""
    by_name = {row.record.check: row.record for row in rows}
    out = []
    for state in states:
        row = by_name.get(state.name)
        if state.check.kind not in WARM_KINDS or row is None or row.status != "pass":
            continue
        result = CheckResult(
            status="pass",
            output=row.output,
            latency=row.latency_ms / 1000,
            observed_at=row.observed_at_ms / 1000,
        )
        candidate = CheckState(
            check=state.check,
            status="pass",
            result=result,
            consecutive_failures=0,
            consecutive_successes=row.consecutive_successes,
            last_success_at=None
            if row.last_success_at_ms is None
            else row.last_success_at_ms / 1000,
        )
        if not candidate.is_stale(now):
            out.append(candidate)
    return out
