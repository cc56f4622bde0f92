"""What the fleet says through Convex: shared outages, a central drain, the shared checks this
instance holds. The store sync builds a FleetView from each answer; the Snapshot reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.state import STALE_INTERVALS, CheckState

# A failure seen by one instance alone is never a shared outage, whatever the fleet's size: a
# fleet of one (or two, at a threshold of 0.5) cannot tell its own fault from everyone's.
MIN_SHARED_FAILING = 2


@dataclass(frozen=True, slots=True)
class Outage:
    """How many live instances fail a check, as Convex counted at the last sync."""

    failing: int
    live: int

    def describe(self, check: str) -> str:
        """`mastra failing on 4 of 5 instances`."""
        return f"{check} failing on {self.failing} of {self.live} instances"


@dataclass(frozen=True, slots=True)
class Drain:
    """A central drain of this instance: why, who asked, and until when (epoch seconds)."""

    reason: str
    by: str
    until: float | None


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet facts of the last sync answer, `at` (epoch seconds), by this instance's clock.

    `grace` is how long Convex may take to answer a sync (the store timeout plus the sync's
    coalescing): a verdict counts for two of the check's intervals plus the grace, and a panic
    check that failed less than one interval plus the grace ago keeps the instance in the pool
    while the fleet's count catches up (a shared cause fails every instance within about one
    interval; counted sooner, the first ones to fail would look like local faults).

    `live` is how many instances the fleet counts live, this one included, as the answer said
    (None: not said). Fewer than MIN_SHARED_FAILING: no other instance could share a failure,
    so none waits. `pending_limit` shortens the wait further (seconds; None: one interval plus
    the grace), for a caller that learns the fleet's verdict sooner than by the next sync.
    """

    threshold: float
    grace: float
    at: float | None = None
    outages: Mapping[str, Outage] = field(default_factory=dict)
    drain: Drain | None = None
    holders: frozenset[str] = frozenset()
    live: int | None = None
    pending_limit: float | None = None

    def shared_outage(self, state: CheckState, now: float) -> Outage | None:
        """The outage that excuses this failing check: counted by Convex recently, on at least
        the threshold of the live instances, and on more than this one."""
        outage = self.outages.get(state.name)
        if outage is None or self.at is None or outage.failing < MIN_SHARED_FAILING:
            return None
        if now - self.at > STALE_INTERVALS * state.check.interval + self.grace:
            return None
        return outage if outage.failing / outage.live >= self.threshold else None

    def pending(self, state: CheckState, now: float) -> bool:
        """True for a check that was passing and failed less than one of its intervals plus
        the grace ago: the instance stays ready while the others' failures, which come within
        an interval of its own when the cause is shared, reach Convex's count (a check that
        fails from the start never waits, nor one in a fleet of one)."""
        since = state.since
        if since is None or state.previous not in ("pass", "warn") or self.alone(state, now):
            return False
        return now - since <= self.pending_window(state)

    def pending_window(self, state: CheckState) -> float:
        """How long a panic check that just failed waits for the fleet's count: one of its
        intervals plus the grace, or `pending_limit` when that is shorter."""
        window = state.check.interval + self.grace
        return window if self.pending_limit is None else min(window, self.pending_limit)

    def alone(self, state: CheckState, now: float) -> bool:
        """True when a recent answer said that fewer than MIN_SHARED_FAILING instances are
        live: no other could share this check's failure."""
        if self.live is None or self.at is None:
            return False
        if now - self.at > STALE_INTERVALS * state.check.interval + self.grace:
            return False
        return self.live < MIN_SHARED_FAILING

    def drained(self, now: float) -> Drain | None:
        """The drain in force, if any."""
        drain = self.drain
        if drain is None or (drain.until is not None and drain.until <= now):
            return None
        return drain


# No fleet to speak of (a monitor built without one): no failure is ever excused.
NO_FLEET = FleetView(threshold=1.0, grace=0.0)
