"""The Monitor owns the served Snapshot: every event builds a new one, and changes are logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from sidecar import logs
from sidecar.checks import Check
from sidecar.fleet import NO_FLEET, FleetView, Watched
from sidecar.metrics import Metrics
from sidecar.result import CheckResult
from sidecar.snapshot import Snapshot, StoreState
from sidecar.state import CheckState

HEARTBEAT_MAX_AGE = 5.0
# A Snapshot whose verdict turns by the clock alone is built again this long after that moment
# (its wait ends just after `changes_at`), not at the next heartbeat up to a second later.
TURN_MARGIN = 0.005


class Monitor:
    """Turns probe results, store outcomes, heartbeats and the drain into Snapshots.

    The Snapshot is the daemon's only in-memory state; handlers read `snapshot` and nothing
    else. `changed` is set whenever a status, readiness or the drain changes, for the sync.
    """

    def __init__(
        self,
        *,
        instance: str,
        version: str,
        checks: Sequence[Check],
        metrics: Metrics,
        fleet: FleetView = NO_FLEET,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._log = logs.get("monitor")
        self.changed = asyncio.Event()
        self.snapshot = Snapshot(
            instance=instance,
            version=version,
            states=tuple(CheckState(check=c) for c in checks),
            built_at=clock(),
            heartbeat=monotonic(),
            fleet=fleet,
        )
        self._metrics = metrics
        self._turn: asyncio.TimerHandle | None = None  # the rebuild at snapshot.changes_at
        # Each check's place in the states (every Snapshot keeps the checks' order).
        self._index = {c.name: i for i, c in enumerate(checks)}
        metrics.watch(self)

    def live(self) -> bool:
        """True while the scheduler's heartbeat is fresh."""
        return self._monotonic() - self.snapshot.heartbeat <= HEARTBEAT_MAX_AGE

    def state(self, name: str) -> CheckState:
        """Check `name`'s state in the current Snapshot."""
        return self.snapshot.states[self._index[name]]

    def record(self, name: str, result: CheckResult) -> None:
        """Take one probe result for check `name` (of a shared check this instance holds:
        for the sync to publish at once)."""
        self._metrics.check_runs.labels(check=name, result=result.status).inc()
        self._metrics.check_duration.labels(check=name).observe(result.latency)
        self.adopt(name, result)
        if name in self.snapshot.fleet.holders:
            self.changed.set()

    def adopt(self, name: str, result: CheckResult) -> None:
        """Take a result of check `name` that another instance probed (a shared check)."""
        states = tuple(s.observe(result) if s.name == name else s for s in self.snapshot.states)
        self._publish(replace(self.snapshot, states=states, built_at=self._clock()))

    def apply_fleet(self, fleet: FleetView) -> None:
        """Take the fleet facts of a sync answer (the door they come in by; what the
        subscription last said stays beside them, `FleetView` decides which is newer)."""
        fleet = replace(fleet, watched=self.snapshot.fleet.watched)
        self._publish(replace(self.snapshot, fleet=fleet, built_at=self._clock()))

    def apply_watch(self, watched: Watched) -> None:
        """Take what the subscription to `health:watch` says (or that it stopped saying it:
        `watched.subscribed` False), between syncs."""
        fleet = replace(self.snapshot.fleet, watched=watched)
        self._publish(replace(self.snapshot, fleet=fleet, built_at=self._clock()))

    def restore(self, states: Iterable[CheckState]) -> None:
        """Take states restored from Convex at start (the warm start); a check that already has
        a result of this process keeps it."""
        restored = {s.name: s for s in states}
        merged = tuple(
            restored.get(s.name, s) if s.result is None else s for s in self.snapshot.states
        )
        self._publish(replace(self.snapshot, states=merged, built_at=self._clock()))

    def heartbeat(self) -> None:
        """The scheduler is alive: refresh the heartbeat (and let stale results turn unknown)."""
        self._publish(replace(self.snapshot, heartbeat=self._monotonic(), built_at=self._clock()))

    def set_store(self, store: StoreState) -> None:
        """Record how the last store call went; log only when that changes."""
        if store == self.snapshot.store:
            return
        before = self.snapshot.store
        if store.status == "error" and (before.status, before.kind) != ("error", store.kind):
            self._log.warning(
                "store failing",
                component="store",
                check="store",
                error=store.kind,
                output=store.message,
            )
        elif store.status == "ok" and before.status == "error":
            self._log.info("store recovered", component="store", check="store")
        self._publish(replace(self.snapshot, store=store, built_at=self._clock()))

    def drain(self) -> None:
        """Start draining: `/ready` answers 503 from now on."""
        self._publish(replace(self.snapshot, draining=True, built_at=self._clock()))

    def _rebuild(self) -> None:
        """Build the Snapshot again as it is now: a wait or a drain ended by the clock."""
        self._turn = None
        self._publish(replace(self.snapshot, built_at=self._clock()))

    def _schedule_turn(self, new: Snapshot) -> None:
        """Rebuild the Snapshot just after its verdict turns by the clock alone (when a
        running loop is there to do it; the heartbeat's rebuild is the backstop)."""
        if self._turn is not None:
            self._turn.cancel()
            self._turn = None
        if new.changes_at is None or new.changes_at <= new.built_at:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = new.changes_at - new.built_at + TURN_MARGIN
        self._turn = loop.call_later(delay, self._rebuild)

    def _publish(self, new: Snapshot) -> None:
        old = self.snapshot
        self.snapshot = new
        self._schedule_turn(new)
        if (old.statuses, old.ready, old.draining) != (new.statuses, new.ready, new.draining):
            self.changed.set()
        if old.ready != new.ready:
            self._log.info(
                "ready" if new.ready else "not ready", ready=new.ready, reasons=list(new.reasons)
            )
        self._log_fleet(old, new)
        for state in new.states:
            before, after = old.statuses[state.name], new.statuses[state.name]
            if before == after:
                continue
            self._metrics.check_transitions.labels(check=state.name, to=after).inc()
            result = state.result
            fields = {
                "check": state.name,
                "from": before,
                "to": after,
                "critical": state.check.critical,
                "output": "" if result is None else result.output,
            }
            if result is not None:
                fields["duration"] = round(result.latency * 1000, 1)
            log = self._log.warning if after in ("fail", "unknown") else self._log.info
            log(f"check {state.name} is {after}", **fields)

    def _log_fleet(self, old: Snapshot, new: Snapshot) -> None:
        """One line when a shared outage starts or ends, and when a drain comes or goes."""
        for name, outage in new.shared_outages.items():
            if name not in old.shared_outages:
                self._log.warning(
                    f"shared outage: {outage.describe(name)}",
                    check=name,
                    failing=outage.failing,
                    live=outage.live,
                )
        for name in old.shared_outages.keys() - new.shared_outages.keys():
            self._log.info(f"shared outage over: {name}", check=name)
        before, after = old.central_drain, new.central_drain
        # One drain is one request (its start, by the deployment's clock); its `until` moves
        # by a few ms with each sync's round trip, so it is no reason for another line.
        if after is not None and (before is None or before.since != after.since):
            self._log.warning(
                f"drained: {after.reason}", by=after.by, since=after.since, until=after.until
            )
        elif after is None and before is not None:
            self._log.info("drain over")
