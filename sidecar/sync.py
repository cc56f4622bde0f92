"""Keeps this instance's results in Convex and brings the fleet's facts back: one signed
`health:sync` per store period, one within about a second of a status change (at most one a
second), one every check interval while a panic check fails, the store fails or a shared check
is configured, the warm start from the first answer, and a last sync on the way out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from sidecar import logs
from sidecar.checks import Check
from sidecar.fleet import Drain, FleetView, Outage
from sidecar.limits import MAX_HOLD_MS, MAX_REASONS, MIN_HOLD_MS, REASON
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.result import CheckResult, clip
from sidecar.snapshot import Snapshot, StoreState
from sidecar.state import probe_record, record_of
from sidecar.store import (
    ClockSkew,
    FunctionError,
    HealthStore,
    RequestRejected,
    StoreError,
    Unauthorized,
)
from sidecar.store.evidence import RuntimeEvidence
from sidecar.store.messages import MAX_PEERS, SharedAsk, Summary, SyncAnswer, SyncRequest, Warm

T = TypeVar("T")
MIN_GAP = 1.0  # seconds between the starts of two calls, at least
COALESCE = 0.2  # a change waits this long for the changes that come with it
# Errors that came from Convex's function runtime: it runs, whatever it said.
RUNTIME_ANSWERS = (Unauthorized, ClockSkew, FunctionError, RequestRejected)


@dataclass(frozen=True, slots=True)
class SyncTiming:
    """The store's pace: `period` between syncs in steady state, `timeout` per call."""

    period: float
    timeout: float

    @property
    def grace(self) -> float:
        """How long an answer may take to come after a change: coalescing, the gap between
        calls, and the call itself."""
        return COALESCE + MIN_GAP + self.timeout


class Syncer:
    """Writes what changed in the Snapshot to Convex and hands the answer's fleet facts to
    the Monitor (and its warm start, once, to `warm_start`); a store failure never stops
    probing."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        store: HealthStore,
        metrics: Metrics,
        evidence: RuntimeEvidence,
        fingerprints: Mapping[str, str],
        timing: SyncTiming,
        threshold: float,
        warm_start: Callable[[Warm], None],
        on_answer: Callable[[SyncAnswer, float, float], None] | None = None,
        advertise: str | None = None,
    ) -> None:
        self._monitor = monitor
        self._warm_start = warm_start
        self._on_answer = on_answer  # (answer, sent, received): the subscription's token, clock
        self._store = store
        self._metrics = metrics
        self._evidence = evidence
        self._fingerprints = dict(fingerprints)
        self._timing = timing
        self._threshold = threshold
        self._log = logs.get("store")
        self._advertise = advertise  # sent with hello: where the peers reach this sidecar
        self._live: int | None = None  # live instances, as the last answer counted them
        # What Convex holds, as far as its answers said: each check's Record.essence, this
        # instance's summary and its failing panic checks.
        self._acked: dict[str, tuple[str, str, int, str]] = {}
        self._acked_summary: Summary | None = None
        self._acked_panic: tuple[str, ...] = ()
        self._hello = True
        self._warmed = False  # the warm start is taken from the first hello's answer only
        # Shared checks: when this holder last sent its own result, and when (deployment ms)
        # the result last taken from the holder was observed.
        self._published: dict[str, float] = {}
        self._adopted: dict[str, float] = {}

    async def run(self) -> None:
        """Sync at once, then every period or soon after a change, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.sync_once()
            except Exception:  # a bug must not end syncing: the next period tries again
                self._log.exception("sync failed unexpectedly")
            await self._until_next(started)

    async def sync_once(self, *, leaving: bool = False) -> None:
        """One `health:sync`: what changed since Convex last acknowledged it. `leaving` (the
        last one, as the process stops) takes the instance out of the fleet's counts; its
        results stay in Convex for its next start's warm start."""
        self._monitor.changed.clear()
        now = time.time()
        request = replace(self._request(self._monitor.snapshot, now), leaving=leaving)
        answer = await self._call(self._store.sync(request))
        if answer is None:
            return
        if self._on_answer is not None:
            self._on_answer(answer, now, time.time())
        if request.hello is not None:
            self._hello = False
            self._acked = {}
            if answer.warm is not None:
                self._acked = {r.check: r.essence for r in answer.warm.records}
                if not self._warmed:
                    self._warm_start(answer.warm)
            self._warmed = True
        self._monitor.apply_fleet(self._fleet_view(answer))
        self._live = answer.live
        self._adopt(answer)
        self._published.update(
            (ask.check, now - ask.result.age_ms / 1000)
            for ask in request.shared
            if ask.result is not None
        )
        self._acked_summary = request.summary or self._acked_summary
        self._acked_panic = request.panic if request.panic is not None else self._acked_panic
        if answer.resend:  # Convex lost this instance (purged): send everything again, soon
            self._acked, self._acked_summary = {}, None
            self._monitor.changed.set()
            return
        self._acked.update((r.check, r.essence) for r in request.records)

    def _request(self, snap: Snapshot, now: float) -> SyncRequest:
        """The next sync's content: changed records, and the fleet's parts when they apply."""
        records = [
            record_of(s, fingerprint=self._fingerprints[s.name], now=now)
            for s in snap.states
            if s.result is not None
        ]
        summary = Summary(
            ready=snap.ready,
            reasons=tuple(clip(r, REASON) for r in snap.reasons[:MAX_REASONS]),
            failing=tuple(name for name, status in snap.statuses.items() if status == "fail"),
        )
        panic = _failing_panic_checks(snap)
        return SyncRequest(
            records=[r for r in records if self._acked.get(r.check) != r.essence],
            hello=self._fingerprints if self._hello else None,
            summary=summary if self._hello or summary != self._acked_summary else None,
            panic=panic if panic or self._acked_panic else None,
            hold_ms=_lease_ms(2 * _longest(snap, panic) + self._timing.grace),
            shared=[self._ask(snap, s.check, now) for s in snap.states if s.check.shared],
            advertise=self._advertise if self._hello else None,
            want_peers=self._wants_peers(snap),
        )

    def _wants_peers(self, snap: Snapshot) -> bool:
        """Whether to ask Convex for peers now: it knows fewer than the fleet has (at most
        MAX_PEERS; while the count is unknown, at least one). Not while the count says it is
        alone: each ask reads the peers' ring (up to about 2.5 KB of Convex bandwidth)."""
        if self._advertise is None:
            return False
        others = 1 if self._live is None else min(MAX_PEERS, self._live - 1)
        return len(snap.fleet.peers) < others

    def _ask(self, snap: Snapshot, check: Check, now: float) -> SharedAsk:
        """The lease request of a shared check, with this holder's newest own result."""
        state = next(s for s in snap.states if s.name == check.name)
        fingerprint = self._fingerprints[check.name]
        result = None
        if (
            check.name in snap.fleet.holders
            and state.result is not None
            and state.result.observed_at > self._published.get(check.name, float("-inf"))
        ):
            result = probe_record(state, fingerprint=fingerprint, now=now)
        return SharedAsk(
            check=check.name,
            fingerprint=fingerprint,
            lease_ms=_lease_ms(2 * check.interval + self._timing.grace),
            result=result,
        )

    def _fleet_view(self, answer: SyncAnswer) -> FleetView:
        now = time.time()
        drain = answer.drain
        snap = self._monitor.snapshot
        return FleetView(
            live=_live(answer),
            threshold=self._threshold,
            grace=self._timing.grace,
            at=now,
            outages={
                check: Outage(failing=failing, live=live)
                for check, (failing, live) in answer.outages.items()
            },
            drain=None
            if drain is None
            else Drain(
                reason=drain.reason,
                by=drain.by,
                since=(answer.now_ms - drain.age_ms) / 1000,  # the deployment's clock: stable
                until=None if drain.remaining_ms is None else now + drain.remaining_ms / 1000,
            ),
            holders=frozenset(a.check for a in answer.shared if a.holder),
            peers=snap.fleet.peers if answer.peers is None else answer.peers,
            # The peers' witness of an outage of Convex, while it counts: the hand-over.
            witnessed=snap.fleet.witness_in_force(snap.states, now),
        )

    def _adopt(self, answer: SyncAnswer) -> None:
        """Take the holders' newer results of the shared checks this instance does not hold."""
        now = time.time()
        for shared in answer.shared:
            record = shared.record
            if shared.holder or record is None or record.status == "unknown":
                continue
            observed = answer.now_ms - record.age_ms  # the deployment's clock: stable
            if observed <= self._adopted.get(shared.check, float("-inf")):
                continue
            self._adopted[shared.check] = observed
            self._monitor.adopt(
                shared.check,
                CheckResult(
                    status=record.status,
                    output=record.output,
                    latency=record.latency_ms / 1000,
                    observed_at=now - record.age_ms / 1000,
                ),
            )

    def _period(self, snap: Snapshot) -> float:
        return sync_period(snap, self._timing.period)

    def _due(self, snap: Snapshot) -> bool:
        request = self._request(snap, time.time())
        return bool(
            request.hello
            or request.records
            or request.summary
            or (request.panic is not None and request.panic != self._acked_panic)
            or any(ask.result is not None for ask in request.shared)
        )

    async def _until_next(self, started: float) -> None:
        """Wait for the next period, or for a change worth writing (coalesced, and never
        sooner than MIN_GAP after the last call started)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                deadline = started + self._period(self._monitor.snapshot)
                async with asyncio.timeout_at(deadline):
                    await self._monitor.changed.wait()
            except TimeoutError:
                return
            await asyncio.sleep(max(COALESCE, started + MIN_GAP - loop.time()))
            if self._due(self._monitor.snapshot):
                return
            self._monitor.changed.clear()

    async def _call(self, call: Awaitable[T]) -> T | None:
        """Await one store call; count it, time it, and turn its outcome into the store state
        and the runtime's evidence."""
        started = time.monotonic()
        try:
            value = await call
        except StoreError as exc:
            self._metrics.store_requests.labels(op="sync", result=exc.kind).inc()
            if isinstance(exc, Unauthorized):
                # The heartbeat or its token refused (purged, expired, the name taken over),
                # or the secret: the next sync is a hello, which gets a new token.
                self._hello = True
            if isinstance(exc, RUNTIME_ANSWERS):
                self._evidence.answered()
            else:
                self._evidence.missed()
            self._monitor.set_store(
                StoreState(status="error", kind=exc.kind, message=str(exc)[:300])
            )
            return None
        finally:
            self._metrics.store_duration.labels(op="sync").observe(time.monotonic() - started)
        self._metrics.store_requests.labels(op="sync", result="ok").inc()
        self._evidence.answered()
        self._monitor.set_store(StoreState(status="ok"))
        return value


def sync_period(snap: Snapshot, period: float) -> float:
    """The time between two syncs: the store `period`; a check's interval while it is a
    failing panic check (the fleet's count converges fast) or a shared one (the holder's
    results stay fresh); and a panic check's interval while the store fails, so that the
    first sync after Convex's return comes within an interval even when nothing changed
    meanwhile (a `convex` check that passes again before it, say: the fleet would not hear
    of this instance for up to a store period)."""
    periods = [period]
    periods += [
        s.check.interval
        for s in snap.states
        if s.check.shared
        or (s.check.panic and (snap.statuses[s.name] == "fail" or snap.store.status == "error"))
    ]
    return max(MIN_GAP, min(periods))


def _live(answer: SyncAnswer) -> int | None:
    """The live instances the answer counts: its `live`, else an outage's count of them."""
    if answer.live is not None:
        return answer.live
    return max((live for _, live in answer.outages.values()), default=None)


def _failing_panic_checks(snap: Snapshot) -> tuple[str, ...]:
    return tuple(s.name for s in snap.states if s.check.panic and snap.statuses[s.name] == "fail")


def _longest(snap: Snapshot, names: tuple[str, ...]) -> float:
    """The longest interval of the named checks (0 when none)."""
    return max((s.check.interval for s in snap.states if s.name in names), default=0.0)


def _lease_ms(seconds: float) -> float:
    """A lease or hold in ms, within what the functions accept (1 s to 1 h)."""
    return min(max(1000 * seconds, MIN_HOLD_MS), MAX_HOLD_MS)
