"""sidecar/sync.py's pure pieces: the grace after a change and the bounds of a lease."""

from __future__ import annotations

import pytest

from sidecar.limits import MAX_HOLD_MS, MIN_HOLD_MS
from sidecar.sync import COALESCE, MIN_GAP, SyncTiming, _lease_ms


def test_sync_grace_and_leases() -> None:
    """The grace is coalescing plus the gap between calls plus a call; a lease or hold is
    kept within what the functions accept (1 s to 1 h)."""
    assert SyncTiming(period=60, timeout=2).grace == pytest.approx(COALESCE + MIN_GAP + 2)
    assert _lease_ms(0.2) == MIN_HOLD_MS
    assert _lease_ms(25.0) == 25_000
    assert _lease_ms(10**6) == MAX_HOLD_MS
