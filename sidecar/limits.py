"""The store protocol's bounds, as the Convex functions enforce them (convex/healthProtocol.ts:
LIMITS and FIELD_LIMITS; tests/modules/store/test_limits.py checks that these copies agree)."""

from __future__ import annotations

MAX_CHECKS = 200  # checks per instance (and per daemon)
MAX_OUTPUT = 1024  # UTF-16 units of a result's output
MIN_TTL_MS = 10_000  # an instance's life after its last sync
MAX_TTL_MS = 86_400_000  # accepted in a body; the functions clamp it to TTL_CLAMP_MS
TTL_CLAMP_MS = 900_000
MIN_PERIOD_MS = 1_000  # the store period a sync reports (periodMs), clamped to this range
MAX_PERIOD_MS = 300_000
TIMESTAMP_WINDOW_MS = 30_000  # a signed call's ts within this of the deployment's clock
MAX_AGE_MS = 86_400_000  # the age of a result (older ones are sent as a day old)
MAX_REASONS = 20  # reasons in an instance's summary
REASON = 300  # UTF-16 units of a reason, and of a drain's reason
INSTANCE = 200  # UTF-16 units of an instance name, and of a drain's `by`
MIN_HOLD_MS = 1_000  # how long a failing panic check or a shared lease counts
MAX_HOLD_MS = 3_600_000  # accepted in a body; the functions clamp it to HOLD_CLAMP_MS
HOLD_CLAMP_MS = 300_000
MIN_DRAIN_MS = 1_000  # how long a drain lasts
MAX_DRAIN_MS = 30 * 86_400_000
