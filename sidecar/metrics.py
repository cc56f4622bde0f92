"""Prometheus metrics on a per-app registry: event counters, and gauges read from the Snapshot."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.snapshot import DRAIN_SOURCES, Snapshot
from sidecar.state import STATUSES

CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STORE_OPS = ("sync",)
STORE_RESULTS = (
    "ok",
    "unauthorized",
    "clock_skew",
    "function_error",
    "request_rejected",
    "unavailable",
    "bad_response",
)


class Source(Protocol):
    """What the gauges read at scrape time: the served Snapshot and liveness (the Monitor)."""

    @property
    def snapshot(self) -> Snapshot:
        """The Snapshot served now."""
        ...

    def live(self) -> bool:
        """True while the scheduler's heartbeat is fresh."""
        ...


class Metrics:
    """Every `sidecar_*` metric of one daemon. Labels are bounded to the configured checks.

    Built where the app is wired and handed to whoever updates it; the gauges read the
    Snapshot of the source given to `watch` (the Monitor, which does so when it is built)."""

    def __init__(
        self,
        *,
        checks: Sequence[str],
        version: str,
        dropped_lines: Callable[[], int] | None = None,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `*_created` series
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.check_runs = Counter(
            "sidecar_check_runs", "Probe runs by result.", ["check", "result"], registry=reg
        )
        self.check_duration = Histogram(
            "sidecar_check_duration_seconds",
            "Probe duration.",
            ["check"],
            buckets=CHECK_BUCKETS,
            registry=reg,
        )
        self.check_transitions = Counter(
            "sidecar_check_transitions",
            "Status changes by new status.",
            ["check", "to"],
            registry=reg,
        )
        self.check_crashes = Counter(
            "sidecar_check_crashes",
            "Check loops that crashed and were restarted.",
            ["check"],
            registry=reg,
        )
        self.store_requests = Counter(
            "sidecar_store_requests",
            "Convex store calls by result.",
            ["op", "result"],
            registry=reg,
        )
        self.store_duration = Histogram(
            "sidecar_store_request_duration_seconds",
            "Convex store call duration.",
            ["op"],
            buckets=CHECK_BUCKETS,
            registry=reg,
        )
        build = Gauge("sidecar_build_info", "Build information.", ["version"], registry=reg)
        build.labels(version=version).set(1)
        reg.register(LogDropsCollector(dropped_lines or (lambda: 0)))
        for name in checks:
            self.check_duration.labels(check=name)
            self.check_crashes.labels(check=name)
            for result in ("pass", "warn", "fail"):
                self.check_runs.labels(check=name, result=result)
            for status in STATUSES:
                self.check_transitions.labels(check=name, to=status)
        for op in STORE_OPS:
            self.store_duration.labels(op=op)
            for result in STORE_RESULTS:
                self.store_requests.labels(op=op, result=result)

    def watch(self, source: Source) -> None:
        """Serve the check and readiness gauges of `source`'s Snapshot from now on, and the
        process's (registered after them: the page keeps its order)."""
        self.registry.register(SnapshotCollector(source))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)


class LogDropsCollector(Collector):
    """Log lines dropped (a closed or full stdout), read at scrape time from `count` (the
    logs module's, handed over where the app is wired)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterable[CounterMetricFamily]:
        """Yield `sidecar_log_lines_dropped_total`."""
        yield CounterMetricFamily(
            "sidecar_log_lines_dropped",
            "Log lines dropped: stdout closed, not read (the queue full) or failing.",
            value=self._count(),
        )


class SnapshotCollector(Collector):
    """Gauges computed from the Snapshot at scrape time, so they can never disagree with it."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield the check and readiness gauges of the current Snapshot."""
        snap = self._source.snapshot
        up = GaugeMetricFamily("sidecar_check_up", "1 when the check passes.", labels=["check"])
        status = GaugeMetricFamily(
            "sidecar_check_status", "1 for the check's current status.", labels=["check", "status"]
        )
        last = GaugeMetricFamily(
            "sidecar_check_last_success_timestamp_seconds",
            "When the check last passed (0: never).",
            labels=["check"],
        )
        failures = GaugeMetricFamily(
            "sidecar_check_consecutive_failures", "Failures in a row.", labels=["check"]
        )
        info = GaugeMetricFamily(
            "sidecar_check_info",
            "The configured checks (always 1): kind, and whether it counts for readiness.",
            labels=["check", "kind", "critical"],
        )
        shared = GaugeMetricFamily(
            "sidecar_shared_outage",
            "1 while the check fails on at least SIDECAR_PANIC_THRESHOLD of the live instances.",
            labels=["check"],
        )
        holder = GaugeMetricFamily(
            "sidecar_check_holder",
            "1 while this instance probes the shared check for the fleet.",
            labels=["check"],
        )
        for state in snap.states:
            info.add_metric([state.name, state.check.kind, str(state.check.critical).lower()], 1.0)
            shared.add_metric([state.name], float(state.name in snap.shared_outages))
            holder.add_metric([state.name], float(state.name in snap.fleet.holders))
            current = snap.statuses[state.name]
            up.add_metric([state.name], 1.0 if current in ("pass", "warn") else 0.0)
            for value in sorted(STATUSES):
                status.add_metric([state.name, value], 1.0 if value == current else 0.0)
            last.add_metric([state.name], state.last_success_at or 0.0)
            failures.add_metric([state.name], float(state.consecutive_failures))
        yield info
        yield shared
        yield holder
        yield up
        yield status
        yield last
        yield failures
        yield GaugeMetricFamily(
            "sidecar_ready", "1 when /ready answers 200.", value=float(snap.ready)
        )
        yield GaugeMetricFamily(
            "sidecar_live", "1 when /live answers 200.", value=float(self._source.live())
        )
        yield from _drain_gauges(snap)
        yield GaugeMetricFamily(
            "sidecar_store_up",
            "1 when the last call to the Convex store succeeded.",
            value=float(snap.store.status == "ok"),
        )
        yield GaugeMetricFamily(
            "sidecar_store_subscribed",
            "1 while the subscription to health:watch delivers the fleet's facts as they "
            "change; 0 while they come by polling (the periodic sync).",
            value=float(snap.fleet.subscribed),
        )


def _drain_gauges(snap: Snapshot) -> Iterable[GaugeMetricFamily]:
    """Whether the daemon drains, why (each source), and the central drain's start and end:
    what an alert needs to tell a planned drain from an outage, and a forgotten one."""
    yield GaugeMetricFamily(
        "sidecar_draining",
        "1 while draining: after a signal, or drained centrally (health-sidecar drain).",
        value=float(bool(snap.drain_sources)),
    )
    source = GaugeMetricFamily(
        "sidecar_draining_source",
        "1 for each reason the daemon drains now: signal (SIGTERM, SIGINT) or central.",
        labels=["source"],
    )
    for name in DRAIN_SOURCES:
        source.add_metric([name], float(name in snap.drain_sources))
    yield source
    drain = snap.central_drain
    yield GaugeMetricFamily(
        "sidecar_drain_started_timestamp_seconds",
        "When the central drain in force began, by Convex's clock (0: none).",
        value=0.0 if drain is None else drain.since,
    )
    yield GaugeMetricFamily(
        "sidecar_drain_until_timestamp_seconds",
        "When the central drain in force ends (0: none, or none set: until undrained).",
        value=0.0 if drain is None or drain.until is None else drain.until,
    )
