"""What the fleet says through Convex: shared outages, a central drain, the shared checks this
instance holds, a handful of live peers. The store sync builds a FleetView from each answer;
the subscription to `health:watch` adds what it hears between syncs (`Watched`); while Convex
cannot be reached, the peers' witness (sidecar/witnesses.py) adds what they see; the Snapshot
reads it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.peers import Peer
from sidecar.state import STALE_INTERVALS, CheckState

# How a drain reads in /ready's reasons (and so in what the fleet sees of an instance).
DRAINED = "drained: "

# How long a failure takes to reach the fleet's verdict while subscribed, besides the probes: a
# sync (0.2 s of coalescing and the call), Convex's recount (at once after a quiet spell, as the
# first failure of an outage and the others' confirmations a fast interval later find it; 0.5 s
# within a burst) and the subscription's delivery, with a margin of about a second for a busy
# machine.
REACTION = 1.5

# How long this instance's own failure takes to reach Convex's verdict and the others, while
# subscribed: the sync (0.2 s of coalescing and the call), the recount at once, the push; about
# 0.3 s on a quiet machine, so a margin of 0.7 s. A count that comes later ends the wait as
# if it had come then: a slow Convex does not keep a local fault in the pool longer.
COUNTED = 1.0

# A failure seen by one instance alone is never a shared outage, whatever the fleet's size: a
# fleet of one (or two, at a threshold of 0.5) cannot tell its own fault from everyone's.
MIN_SHARED_FAILING = 2


@dataclass(frozen=True, slots=True)
class Outage:
    """How many live instances fail a check, as Convex counted at the last sync."""

    failing: int
    live: int
    witnesses: tuple[str, ...] = ()  # the peers that saw it, when Convex could not count

    def describe(self, check: str) -> str:
        """`mastra failing on 4 of 5 instances`, or, from peers' witness, `convex failing on
        3 of 3 instances that answered (witnessed by peers b, c; Convex unreachable)`."""
        if self.witnesses:
            return (
                f"{check} failing on {self.failing} of {self.live} instances that answered "
                f"(witnessed by peers {', '.join(self.witnesses)}; Convex unreachable)"
            )
        return f"{check} failing on {self.failing} of {self.live} instances"


@dataclass(frozen=True, slots=True)
class Witnessed:
    """What the peers said of one check while Convex could not be reached, asked at `at`
    (epoch seconds): instances that answered and instances that see it fail (this one
    counted in both), and the names of the peers that see it fail."""

    failing: int
    answered: int
    peers: tuple[str, ...]
    at: float
    possible: int = 0  # instances that might yet see it: this one and the peers cut off too


@dataclass(frozen=True, slots=True)
class Drain:
    """A central drain of this instance: why, who asked (the operator's own claim: the CLI
    sends `user@host`, which nothing verifies), since and until when (epoch seconds; `since`
    by the deployment's clock, `until` by this instance's)."""

    reason: str
    by: str
    since: float
    until: float | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Convex's count for one panic check as the subscription last heard it; `since` is when
    the count last changed (epoch seconds, by this instance's clock)."""

    failing: int
    live: int
    since: float


@dataclass(frozen=True, slots=True)
class Watched:
    """What the subscription to `health:watch` last said, received at `at` (epoch seconds).

    `subscribed` is True while values arrive as they change: its facts are then the newest
    there are and replace the last sync's; otherwise they count only when newer than the last
    sync's answer. `drain` and `verdicts` are always the whole of the watched documents.
    """

    at: float
    subscribed: bool
    drain: Drain | None = None
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)


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
    peers: tuple[Peer, ...] = ()
    witnessed: Mapping[str, Witnessed] = field(default_factory=dict)
    watched: Watched | None = None

    @property
    def subscribed(self) -> bool:
        """True while the subscription delivers the fleet's facts as they change."""
        return self.watched is not None and self.watched.subscribed

    def _watch(self) -> Watched | None:
        """The subscription's facts when they are the newest: subscribed, or heard after the
        last sync's answer."""
        watched = self.watched
        if watched is None:
            return None
        if watched.subscribed or self.at is None or watched.at >= self.at:
            return watched
        return None

    def outage(self, name: str) -> tuple[Outage | None, float | None]:
        """Check `name`'s count and when it was known current (None: never heard): the
        subscription's verdict while it is the newest (current now while subscribed), else
        the last sync's."""
        watched = self._watch()
        if watched is None:
            return self.outages.get(name), self.at
        verdict = watched.verdicts.get(name)
        outage = None if verdict is None else Outage(failing=verdict.failing, live=verdict.live)
        return outage, float("inf") if watched.subscribed else watched.at

    def shared_outage(self, state: CheckState, now: float) -> Outage | None:
        """The outage that excuses this failing check: counted by Convex recently (or heard
        through the subscription, current while it is subscribed), on at least the threshold of
        the live instances, and on more than this one (or, while Convex cannot be reached,
        witnessed so by the peers)."""
        witnessed = self.witnessed_outage(state, now)
        if witnessed is not None:
            return witnessed
        outage, known = self.outage(state.name)
        if outage is None or known is None or outage.failing < MIN_SHARED_FAILING:
            return None
        if now - known > STALE_INTERVALS * state.check.interval + self.grace:
            return None
        return outage if outage.failing / outage.live >= self.threshold else None

    def witnessed_outage(self, state: CheckState, now: float) -> Outage | None:
        """The peers' witness of this check, while it counts: at least MIN_SHARED_FAILING
        instances, and at least the threshold of those that answered, see it fail.

        An answer counts for two of the check's intervals after it was asked, and only for
        the failure it was asked about (not one that began later). It outlives Convex's return
        (the sync answers carry it over, `witness_in_force`): the first answers after the
        return still count the outage's failures as they were before it (the recount is
        debounced, and the other instances report theirs with their next syncs), and the check
        here still fails until its next probe; dropped then, the witness would turn a shared
        outage into a local fault for every instance at once, just as it ends."""
        seen = self.witnessed.get(state.name)
        if seen is None or not _in_force(seen, state, now):
            return None
        if state.since is not None and seen.at < state.since:
            return None
        if seen.failing < MIN_SHARED_FAILING or seen.failing / seen.answered < self.threshold:
            return None
        return Outage(failing=seen.failing, live=seen.answered, witnesses=seen.peers)

    def witness_in_force(self, states: Iterable[CheckState], now: float) -> Mapping[str, Witnessed]:
        """The peers' answers that still count at `now` (two intervals of their check): what a
        sync answer's view carries over, so that Convex's return hands over to its count
        without a gap."""
        by_name = {s.name: s for s in states}
        return {
            name: seen
            for name, seen in self.witnessed.items()
            if name in by_name and _in_force(seen, by_name[name], now)
        }

    def awaiting_witness(self, state: CheckState) -> bool:
        """While Convex cannot be reached: whether the peers may yet call this failure shared
        (peers are known, and they were not asked since it failed, or too few of them reach
        Convex for the failure to be surely this instance's own). No answer at all, or enough
        peers that reach Convex: a local fault at once."""
        if not self.peers:
            return False
        seen = self.witnessed.get(state.name)
        if seen is None or state.since is None or seen.at < state.since:
            return True
        return seen.possible >= MIN_SHARED_FAILING and (
            seen.possible / seen.answered >= self.threshold
        )

    def pending(self, state: CheckState, now: float) -> bool:
        """True for a check that was passing and failed less than one of its intervals plus
        the grace ago: the instance stays ready while the others' failures, which come within
        an interval of its own when the cause is shared, reach Convex's count (a check that
        fails from the start never waits, nor one in a fleet of one)."""
        since = state.since
        if since is None or state.previous not in ("pass", "warn") or self.alone(state, now):
            return False
        return now <= self.pending_until(state)

    def pending_window(self, state: CheckState) -> float:
        """How long a panic check that just failed waits for the fleet's count: one of its
        intervals plus the grace, or `pending_limit` when that is shorter."""
        window = state.check.interval + self.grace
        return window if self.pending_limit is None else min(window, self.pending_limit)

    def pending_until(self, state: CheckState) -> float:
        """When the wait of a panic check that failed at `state.since` ends (epoch seconds).

        Polling: after `pending_window`. Subscribed, sooner: once Convex's verdict counts this
        instance's failure (its `since` at or after the failure), the others hear of it at once,
        re-probe within their fast interval and report; if the count is still not a shared
        outage by then, the fault is local. So the wait ends `reaction(state)` after the
        verdict that counted this failure, and at the latest COUNTED + `reaction` after the
        failure (a count that has not come by then is late, or lost); never later than
        `pending_window`.
        """
        since = state.since if state.since is not None else 0.0
        until = since + self.pending_window(state)
        watched = self.watched
        if watched is None or not watched.subscribed:
            return until
        counted = since + COUNTED
        verdict = watched.verdicts.get(state.name)
        if verdict is not None and verdict.failing >= 1 and verdict.since >= since - 1.0:
            counted = min(counted, verdict.since)
        return min(until, counted + self.reaction(state))

    @staticmethod
    def reaction(state: CheckState) -> float:
        """How long the others take to confirm a failure they have just heard of: a hurried
        probe (within the jitter of a fast interval), then `failures_before_fail - 1` more at
        the fast pace, each taking about as long as this instance's failing probe took (a
        hung dependency: up to the timeout), then their sync, the recount and its delivery."""
        check = state.check
        fast = min(check.fast_interval, check.interval)
        failures = check.failures_before_fail
        took = 0.0 if state.result is None else min(state.result.latency, check.timeout)
        return fast * (check.jitter + failures - 1) + failures * took + REACTION

    def alone(self, state: CheckState, now: float) -> bool:
        """True when a recent answer said that fewer than MIN_SHARED_FAILING instances are
        live: no other could share this check's failure."""
        if self.live is None or self.at is None:
            return False
        if now - self.at > STALE_INTERVALS * state.check.interval + self.grace:
            return False
        return self.live < MIN_SHARED_FAILING

    def drained(self, now: float) -> Drain | None:
        """The drain in force, if any (the subscription's while its facts are the newest)."""
        watched = self._watch()
        drain = self.drain if watched is None else watched.drain
        if drain is None or (drain.until is not None and drain.until <= now):
            return None
        return drain


def _in_force(seen: Witnessed, state: CheckState, now: float) -> bool:
    """Whether a witness answer about `state`'s check still counts: two of its intervals."""
    return now - seen.at <= STALE_INTERVALS * state.check.interval


# No fleet to speak of (a monitor built without one): no failure is ever excused.
NO_FLEET = FleetView(threshold=1.0, grace=0.0)
