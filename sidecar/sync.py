"""Keeps this instance's results in Convex: one signed `health:sync` per store period, one
within about a second of a status change (at most one a second), the warm start from the first
answer, and a last sync on the way out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import TypeVar

from sidecar import logs
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.snapshot import StoreState
from sidecar.state import Record, record_of
from sidecar.store import FunctionError, HealthStore, RequestRejected, StoreError, Unauthorized
from sidecar.store.evidence import RuntimeEvidence
from sidecar.warmstart import restorable

T = TypeVar("T")
MIN_GAP = 1.0  # seconds between the starts of two calls, at least
COALESCE = 0.2  # a change waits this long for the changes that come with it
# Errors that came from Convex's function runtime: it runs, whatever it said.
RUNTIME_ANSWERS = (Unauthorized, FunctionError, RequestRejected)


class Syncer:
    """Writes what changed in the Snapshot to Convex; a store failure never stops probing."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        store: HealthStore,
        metrics: Metrics,
        evidence: RuntimeEvidence,
        fingerprints: Mapping[str, str],
        period: float,
    ) -> None:
        self._monitor = monitor
        self._store = store
        self._metrics = metrics
        self._evidence = evidence
        self._fingerprints = dict(fingerprints)
        self._period = period
        self._log = logs.get("store")
        # What Convex holds for each check (Record.essence), as far as its answers said.
        self._acked: dict[str, tuple[str, str, int, str]] = {}
        self._hello = True

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

    async def sync_once(self) -> None:
        """One `health:sync`: the records that changed since Convex last acknowledged them."""
        self._monitor.changed.clear()
        pending = self._pending(time.time())
        hello = self._fingerprints if self._hello else None
        answer = await self._call(self._store.sync(pending, hello=hello))
        if answer is None:
            return
        if hello is not None:
            self._hello = False
            self._acked = {}
            if answer.warm is not None:
                self._acked = {r.check: r.essence for r in answer.warm.records}
                self._warm_start(answer.warm.records, answer.warm.confirmed_age_ms / 1000)
        if answer.resend:  # Convex lost this instance (purged): send everything again, soon
            self._acked = {}
            self._monitor.changed.set()
            return
        self._acked.update((r.check, r.essence) for r in pending)

    def _pending(self, now: float) -> list[Record]:
        records = (
            record_of(s, fingerprint=self._fingerprints[s.name], now=now)
            for s in self._monitor.snapshot.states
            if s.result is not None
        )
        return [r for r in records if self._acked.get(r.check) != r.essence]

    def _warm_start(self, records: tuple[Record, ...], confirmed_age: float) -> None:
        states = restorable(
            self._monitor.snapshot.states,
            records,
            confirmed_age=confirmed_age,
            fingerprints=self._fingerprints,
            now=time.time(),
        )
        if states:
            self._monitor.restore(states)
            self._log.info("warm start", checks=sorted(s.name for s in states))

    async def _until_next(self, started: float) -> None:
        """Wait for the next period, or for a change worth writing (coalesced, and never
        sooner than MIN_GAP after the last call started)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(started + self._period):
                    await self._monitor.changed.wait()
            except TimeoutError:
                return
            await asyncio.sleep(max(COALESCE, started + MIN_GAP - loop.time()))
            if self._hello or self._pending(time.time()):
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
