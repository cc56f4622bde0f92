"""The Snapshot: everything the endpoints serve, immutable, with its plain bodies pre-rendered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from sidecar.checks import Check
from sidecar.fleet import DRAINED, Drain, FleetView, Outage
from sidecar.state import CheckState, Status

HealthStatus = Literal["ok", "degraded", "error"]
StoreStatus = Literal["ok", "error", "unknown"]
# Why the daemon drains: a signal (SIGTERM, SIGINT: it exits after the drain) or a central
# drain (`health-sidecar drain`, through Convex: it stays until undrained or its end).
DrainSource = Literal["signal", "central"]
DRAIN_SOURCES: tuple[DrainSource, ...] = ("signal", "central")


@dataclass(frozen=True, slots=True)
class StoreState:
    """How the last exchange with Convex went (`kind` is a StoreError kind when it failed)."""

    status: StoreStatus = "unknown"
    kind: str | None = None
    message: str = ""


def iso(epoch: float) -> str:
    """An ISO-8601 UTC timestamp with milliseconds, like JavaScript's `toISOString()`."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes (the same text Uptime Kuma's keyword monitor matches on).

    orjson writes what `json.dumps(value, separators=(",", ":"), ensure_ascii=False)` does,
    10x faster: the rendered variants (`?verbose`, health+json) serve ~25% more requests per
    second with it (bench/throughput.py), and every Snapshot renders its bodies with it.
    """
    return orjson.dumps(value)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the daemon knows at one moment. Replaced whole, never mutated; handlers only read.

    `draining` is set by a signal; `drain_sources` says every reason it drains now (the
    signal, a central drain in force), and `central_drain` is that drain."""

    instance: str
    version: str
    states: tuple[CheckState, ...]
    built_at: float
    heartbeat: float
    fleet: FleetView
    store: StoreState = StoreState()
    draining: bool = False
    statuses: Mapping[str, Status] = field(init=False)
    shared_outages: Mapping[str, Outage] = field(init=False)
    awaiting_count: tuple[str, ...] = field(init=False)
    # When this Snapshot's verdict turns by the clock alone (epoch seconds; None: it does not):
    # a wait for the fleet's count ends, or a central drain reaches its end.
    changes_at: float | None = field(init=False)
    central_drain: Drain | None = field(init=False)
    drain_sources: tuple[DrainSource, ...] = field(init=False)
    ready: bool = field(init=False)
    reasons: tuple[str, ...] = field(init=False)
    health: HealthStatus = field(init=False)
    ready_body: bytes = field(init=False)
    health_body: bytes = field(init=False)

    def __post_init__(self) -> None:
        now = self.built_at
        statuses = {s.name: s.effective_status(now) for s in self.states}
        shared = {
            s.name: outage
            for s in self.states
            if s.check.panic
            and statuses[s.name] == "fail"
            and (outage := self.fleet.shared_outage(s, now)) is not None
        }
        # A panic check that just failed, waiting for Convex's count (the store answering) or,
        # while the store fails, for the last known peers' witness.
        awaiting = tuple(
            s.name
            for s in self.states
            if s.check.panic
            and statuses[s.name] == "fail"
            and s.name not in shared
            and (self.store.status != "error" or self.fleet.awaiting_witness(s))
            and self.fleet.pending(s, now)
        )
        reasons = ["draining"] if self.draining else []
        drain = self.fleet.drained(now)
        if drain is not None:
            reasons.append(f"{DRAINED}{drain.reason}")
        sources: tuple[DrainSource, ...] = ("signal",) if self.draining else ()
        if drain is not None:
            sources += ("central",)
        reasons += [
            f"{s.name} is {statuses[s.name]}"
            for s in self.states
            if s.check.critical
            and statuses[s.name] not in ("pass", "warn")
            and s.name not in shared
            and s.name not in awaiting
        ]
        if not self.states:
            reasons.append("no checks configured")
        critical_fail = any(s.check.critical and statuses[s.name] == "fail" for s in self.states)
        all_ok = all(v == "pass" for v in statuses.values()) and self.store.status != "error"
        health: HealthStatus = "error" if critical_fail else "ok" if all_ok else "degraded"
        setattr_ = object.__setattr__
        setattr_(self, "statuses", statuses)
        setattr_(self, "shared_outages", shared)
        setattr_(self, "awaiting_count", awaiting)
        ends = [self.fleet.pending_until(s) for s in self.states if s.name in awaiting]
        if drain is not None and drain.until is not None:
            ends.append(drain.until)
        setattr_(self, "changes_at", min(ends, default=None))
        setattr_(self, "central_drain", drain)
        setattr_(self, "drain_sources", sources)
        setattr_(self, "ready", not reasons)
        setattr_(self, "reasons", tuple(reasons))
        setattr_(self, "health", health)
        setattr_(self, "ready_body", dumps(self.ready_document()))
        setattr_(self, "health_body", dumps(self.health_document(details=False)))

    def probes(self, check: Check) -> bool:
        """Whether this instance probes `check` itself: a shared check only while it holds
        the lease, or while Convex cannot tell who does (every instance then probes)."""
        return not check.shared or check.name in self.fleet.holders or self.store.status != "ok"

    @property
    def health_ok(self) -> bool:
        """`/health` answers 200 unless a critical check fails."""
        return self.health != "error"

    def ready_document(self) -> dict[str, Any]:
        """The body of `/ready`: `{"ready": true}` or `{"ready": false, "reasons": [...]}`."""
        if self.ready:
            return {"ready": True}
        return {"ready": False, "reasons": list(self.reasons)}

    def health_document(self, *, details: bool) -> dict[str, Any]:
        """The seed's `/health` shape; per-check details only when `details` is true."""
        services = {name: _service(status) for name, status in self.statuses.items()}
        services["store"] = "error" if self.store.status == "error" else "ok"
        doc: dict[str, Any] = {
            "status": self.health,
            "timestamp": iso(self.built_at),
            "services": services,
        }
        if details:
            doc["instance"] = self.instance
            doc["version"] = self.version
            doc["ready"] = self.ready
            doc["draining"] = bool(self.drain_sources)
            doc["drain"] = self._drain_details()
            doc["checks"] = {s.name: self._details(s) for s in self.states}
            doc["store"] = {
                "status": self.store.status,
                "error": self.store.kind,
                "output": self.store.message,
            }
            doc["fleet"] = self._fleet_details()
        return doc

    def _drain_details(self) -> dict[str, Any] | None:
        """Why the daemon drains, and the central drain's reason, who asked (as the caller
        claimed: nothing verifies it), since and until when (null: until undrained)."""
        if not self.drain_sources:
            return None
        drain = self.central_drain
        return {
            "sources": list(self.drain_sources),
            "central": None
            if drain is None
            else {
                "reason": drain.reason,
                "claimed_by": drain.by,
                "since": iso(drain.since),
                "until": None if drain.until is None else iso(drain.until),
            },
        }

    def _fleet_details(self) -> dict[str, Any]:
        return {
            "shared_outages": {
                name: f"shared outage: {outage.describe(name)}"
                for name, outage in self.shared_outages.items()
            },
            "awaiting_count": list(self.awaiting_count),
            "holder": sorted(self.fleet.holders),
            "synced_at": None if self.fleet.at is None else iso(self.fleet.at),
            "peers": [p.instance for p in self.fleet.peers],
        }

    def health_json_document(self, *, details: bool) -> dict[str, Any]:
        """The IETF health-check format (`application/health+json`)."""
        checks: dict[str, list[dict[str, Any]]] = {}
        for state in self.states:
            entry: dict[str, Any] = {
                "componentId": state.name,
                "componentType": state.check.kind,
                "status": _ietf(self.statuses[state.name]),
                "affectsServiceHealth": state.check.critical,
            }
            if state.result is not None:
                entry["observedValue"] = round(state.result.latency * 1000, 3)
                entry["observedUnit"] = "ms"
                entry["time"] = iso(state.result.observed_at)
                if details and state.result.output:
                    entry["output"] = state.result.output
            checks[f"{state.name}:responseTime"] = [entry]
        checks["store"] = [self._store_component(details=details)]
        status = {"ok": "pass", "degraded": "warn", "error": "fail"}[self.health]
        doc: dict[str, Any] = {
            "status": status,
            "version": self.version,
            "serviceId": self.instance,
            "description": "health-sidecar",
            "checks": checks,
        }
        notes = list(self.reasons)
        if self.store.status == "error":
            notes.append(f"store is failing ({self.store.kind}): results are not kept in Convex")
        if notes:
            doc["notes"] = notes
        return doc

    def _store_component(self, *, details: bool) -> dict[str, Any]:
        """The Convex store as a component: never affects service health, but says why
        the service is `warn` when it fails."""
        entry: dict[str, Any] = {
            "componentId": "store",
            "componentType": "datastore",
            "status": {"ok": "pass", "error": "fail", "unknown": "warn"}[self.store.status],
            "affectsServiceHealth": False,
        }
        if self.store.kind is not None:
            entry["observedValue"] = self.store.kind
        if details and self.store.message:
            entry["output"] = self.store.message
        return entry

    def _details(self, state: CheckState) -> dict[str, Any]:
        result = state.result
        return {
            "status": self.statuses[state.name],
            "kind": state.check.kind,
            "critical": state.check.critical,
            "latency_ms": None if result is None else round(result.latency * 1000, 3),
            "observed_at": None if result is None else iso(result.observed_at),
            "last_success": None if state.last_success_at is None else iso(state.last_success_at),
            "consecutive_failures": state.consecutive_failures,
            "consecutive_successes": state.consecutive_successes,
            "output": "" if result is None else result.output,
        }


def _service(status: Status) -> str:
    return {"pass": "ok", "warn": "ok", "fail": "error", "unknown": "unknown"}[status]


def _ietf(status: Status) -> str:
    return {"pass": "pass", "warn": "warn", "fail": "fail", "unknown": "warn"}[status]
