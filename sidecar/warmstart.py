"""The warm start: which results stored in Convex a restarted daemon may serve at once, and
the step that hands them to the Monitor when the first sync's answer brings them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from sidecar import logs
from sidecar.monitor import Monitor
from sidecar.result import CheckResult
from sidecar.state import CheckState, Record
from sidecar.store.messages import Warm

# Dependency checks may be restored; checks of the container beside always run first.
WARM_KINDS = frozenset({"convex", "mastra"})


def restorable(
    states: Sequence[CheckState],
    records: Sequence[Record],
    *,
    confirmed_age: float,
    fingerprints: Mapping[str, str],
    now: float,
) -> list[CheckState]:
    """The states a warm start may take: passing records of dependency checks whose definition
    (fingerprint) is the one configured now, and that are not stale. Every stored record was
    still current at the instance's last sync, `confirmed_age` seconds ago."""
    by_name = {r.check: r for r in records}
    confirmed_at = now - confirmed_age
    out = []
    for state in states:
        record = by_name.get(state.name)
        if (
            state.check.kind not in WARM_KINDS
            or record is None
            or record.status != "pass"
            or record.fingerprint != fingerprints.get(state.name)
        ):
            continue
        result = CheckResult(
            status="pass",
            output=record.output,
            latency=record.latency_ms / 1000,
            observed_at=confirmed_at,
        )
        candidate = CheckState(
            check=state.check,
            status="pass",
            result=result,
            consecutive_successes=record.consecutive_successes,
            last_success_at=confirmed_at,
        )
        if not candidate.is_stale(now):
            out.append(candidate)
    return out


class WarmStart:
    """Restores the Monitor from the stored results of the first sync's answer (once per
    process: only the answer to a hello carries them)."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        fingerprints: Mapping[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._monitor = monitor
        self._fingerprints = dict(fingerprints)
        self._clock = clock
        self._log = logs.get("store")

    def __call__(self, warm: Warm) -> None:
        """Hand the restorable states of `warm` to the Monitor, and log which they were."""
        states = restorable(
            self._monitor.snapshot.states,
            warm.records,
            confirmed_age=warm.confirmed_age_ms / 1000,
            fingerprints=self._fingerprints,
            now=self._clock(),
        )
        if states:
            self._monitor.restore(states)
            self._log.info("warm start", checks=sorted(s.name for s in states))
