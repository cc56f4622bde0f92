"""Keeps this instance's one subscription to `health:watch` open and hands what it hears to the
Monitor: a drain at once, the fleet's verdicts between syncs, and a hurried probe of a panic
check another instance reports failing.

The subscription's arguments are `{instance, token}`: the token comes from each hello's answer
(through the Syncer), so a new token re-subscribes. Its times are the deployment's (ms); each sync
answer's `now` gives the offset to this instance's clock. Polling is the fallback: while the
subscription is not subscribed, the periodic sync carries the same facts, only later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from sidecar import logs
from sidecar.fleet import Drain, Verdict, Watched
from sidecar.monitor import Monitor
from sidecar.snapshot import Snapshot
from sidecar.store.errors import BadResponse
from sidecar.store.messages import SyncAnswer, WatchAnswer, watch_answer
from sidecar.store.subscription import State, Subscription, Timing

WATCH = "health:watch"


@dataclass(frozen=True, slots=True)
class ServerClock:
    """The deployment's clock (ms) against this instance's (epoch seconds)."""

    offset_ms: float  # the deployment's time minus this instance's, in ms

    @classmethod
    def learn(cls, *, now_ms: float, sent: float, received: float) -> ServerClock:
        """The offset from a sync answer's `now`, taken as the middle of its round trip."""
        return cls(offset_ms=now_ms - 1000 * (sent + received) / 2)

    def local(self, ms: float) -> float:
        """A deployment time (ms) as this instance's epoch seconds."""
        return (ms - self.offset_ms) / 1000


def watched_of(
    answer: WatchAnswer, *, clock: ServerClock, at: float, subscribed: bool = True
) -> Watched:
    """A `health:watch` value as the fleet facts the Snapshot reads, by this instance's clock."""
    drain = answer.drain
    return Watched(
        at=at,
        subscribed=subscribed,
        drain=None
        if drain is None
        else Drain(
            reason=drain.reason,
            by=drain.by,
            since=drain.at_ms / 1000,  # the deployment's clock, as the sync says it: stable
            until=None if drain.until_ms is None else clock.local(drain.until_ms),
        ),
        verdicts={
            v.check: Verdict(failing=v.failing, live=v.live, since=clock.local(v.since_ms))
            for v in answer.verdicts
        },
    )


def to_hurry(before: Mapping[str, Verdict], after: Watched, snap: Snapshot) -> tuple[str, ...]:
    """The panic checks of this instance to probe at once: a verdict that changed and counts
    another instance failing it, while it does not fail here (yet); or, while it fails here,
    counts fewer failing than before (the others recover: so may this one, and a failure
    left behind as the count falls under the threshold would look local, though it was the
    shared outage's until the next probe says otherwise)."""
    names = []
    for state in snap.states:
        verdict = after.verdicts.get(state.name)
        if not state.check.panic or verdict is None or verdict == before.get(state.name):
            continue
        if snap.statuses[state.name] != "fail":
            hurry = verdict.failing >= 1
        else:
            was = before.get(state.name)
            hurry = was is not None and verdict.failing < was.failing
        if hurry:
            names.append(state.name)
    return tuple(names)


class Watch:
    """One subscription to `health:watch`, re-made with each new token; its values go to the
    Monitor (`apply_watch`), its hurried checks to `hurry` (the Scheduler's)."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        session: aiohttp.ClientSession,
        url: str,
        instance: str,
        hurry: Callable[[str], bool],
        timing: Timing | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._monitor = monitor
        self._session = session
        self._url = url
        self._instance = instance
        self._hurry = hurry
        self._timing = timing or Timing()
        self._clock = clock
        self._log = logs.get("watch")
        self._server: ServerClock | None = None
        self._token: str | None = None
        self._renew = asyncio.Event()
        self._subscription: Subscription | None = None
        self._logged_bad = False
        self._refused: str | None = None  # a token whose answers were not understood

    def answered(self, answer: SyncAnswer, sent: float, received: float) -> None:
        """A sync answer came (sent and received by this instance's clock): learn the offset
        to the deployment's clock, and a hello's new token (which re-subscribes)."""
        self._server = ServerClock.learn(now_ms=answer.now_ms, sent=sent, received=received)
        if answer.token is not None and answer.token != self._token:
            self._token = answer.token
            self._renew.set()

    async def run(self) -> None:
        """Keep the subscription of the latest token until cancelled."""
        try:
            while True:
                await self._renew.wait()
                self._renew.clear()
                await self._stop()
                self._start()
        finally:
            await self._stop()

    def _start(self) -> None:
        token = self._token
        if token is None or token == self._refused:
            return
        subscription = Subscription(
            self._session,
            url=self._url,
            path=WATCH,
            args={"instance": self._instance, "token": token},
            on_value=self._value,
            on_state=self._state,
            timing=self._timing,
        )
        self._subscription = subscription
        subscription.start()

    async def _stop(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.stop()
        self._unsubscribed()

    def _value(self, value: Any) -> None:
        """A new value of the query: the fleet facts for the Monitor, and the hurried checks."""
        server = self._server
        if server is None:  # no sync answered yet: no token either, so never here
            return
        try:
            answer = watch_answer(value)
        except BadResponse as exc:
            self._not_understood(str(exc))
            return
        snap = self._monitor.snapshot
        before = snap.fleet.watched
        watched = watched_of(answer, clock=server, at=self._clock())
        self._monitor.apply_watch(watched)
        for name in to_hurry({} if before is None else before.verdicts, watched, snap):
            self._hurry(name)

    def _state(self, state: State) -> None:
        if state is State.READY and self._token != self._refused:
            watched = self._monitor.snapshot.fleet.watched
            if watched is not None and not watched.subscribed:
                self._monitor.apply_watch(replace(watched, subscribed=True))
        else:
            self._unsubscribed()

    def _unsubscribed(self) -> None:
        """The facts stop coming as they change: the last ones count until a newer sync."""
        watched = self._monitor.snapshot.fleet.watched
        if watched is not None and watched.subscribed:
            self._monitor.apply_watch(replace(watched, subscribed=False))

    def _not_understood(self, what: str) -> None:
        """A value of a shape this version does not know: logged once; polling carries the
        facts until the next token (a hello) subscribes again."""
        if not self._logged_bad:
            self._logged_bad = True
            self._log.warning("health:watch answer not understood: polling instead", error=what)
        self._refused = self._token
        self._unsubscribed()
        self._renew.set()  # the loop stops the subscription
