"""sidecar/sync.py's pure pieces: the grace after a change, the bounds of a lease, the live
count of an answer, and the time between syncs."""

from __future__ import annotations

import pytest

from sidecar.limits import MAX_HOLD_MS, MIN_HOLD_MS
from sidecar.snapshot import StoreState
from sidecar.store.errors import BadResponse
from sidecar.store.messages import sync_answer
from sidecar.sync import COALESCE, MIN_GAP, SyncTiming, _lease_ms, _live, sync_period
from tests.modules.test_fleet import T0, fleet, monitor, result


def test_sync_grace_and_leases() -> None:
    """The grace is coalescing plus the gap between calls plus a call; a lease or hold is
    kept within what the functions accept (1 s to 1 h)."""
    assert SyncTiming(period=60, timeout=2).grace == pytest.approx(COALESCE + MIN_GAP + 2)
    assert _lease_ms(0.2) == MIN_HOLD_MS
    assert _lease_ms(25.0) == 25_000
    assert _lease_ms(10**6) == MAX_HOLD_MS


def answer(**extra: object) -> dict[str, object]:
    """A `health:sync` answer as Convex writes it (every number a float)."""
    return {
        "now": 1.8e12,
        "expiresAt": 1.8e12 + 60_000.0,
        "written": 0.0,
        "resend": False,
        "warm": None,
        "heartbeat": "hb1",
        "outages": [],
        "shared": [],
        "drain": None,
        **extra,
    }


def test_the_live_count_comes_from_the_answer_or_its_outages() -> None:
    """An answer's `live` is parsed when present (a missing key: unknown); without it, an
    outage's count of live instances is the live count; a `live` that is not a number is a
    bad response."""
    assert sync_answer(answer()).live is None
    assert _live(sync_answer(answer())) is None
    assert _live(sync_answer(answer(live=1.0))) == 1
    outage = {"check": "mastra", "failing": 1.0, "live": 3.0}
    assert sync_answer(answer(outages=[outage])).live is None
    assert _live(sync_answer(answer(outages=[outage]))) == 3
    assert _live(sync_answer(answer(outages=[outage], live=4.0))) == 4
    with pytest.raises(BadResponse):
        sync_answer(answer(live="1"))


def test_while_the_store_fails_it_is_retried_every_panic_check_interval() -> None:
    """Steady state: the store period. A failing panic check: its interval. The store failing
    while every check passes (the `convex` check passed again before the first sync after
    Convex's return): still the panic check's interval, not a whole store period."""
    now = [T0]
    m = monitor(now, fleet())
    m.record("mastra", result("pass", T0))
    m.record("app", result("pass", T0))
    assert sync_period(m.snapshot, 60.0) == 60.0
    m.set_store(StoreState(status="error", kind="unavailable", message="cannot reach"))
    assert sync_period(m.snapshot, 60.0) == 10.0
    m.set_store(StoreState(status="ok"))
    m.record("mastra", result("fail", T0 + 1))
    m.record("mastra", result("fail", T0 + 2))
    assert sync_period(m.snapshot, 60.0) == 10.0
