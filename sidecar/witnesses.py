"""The asker: while Convex cannot be reached and a panic check fails here, ask the last known
peers (the last sync answer's handful) what they see, and hand their tally to the Monitor.

Each failing check is asked about as soon as it fails, again once late in the window that keeps
a just-failed check pending (the witnesses were hurried to probe it meanwhile), and then once
per interval while it fails (a witness answer counts for two intervals: fleet.py). Once Convex
answers again, nobody is asked any more: the last answers count out their two intervals (the sync
answers carry them over) while Convex's count takes over.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import aiohttp

from sidecar import logs
from sidecar.monitor import Monitor
from sidecar.peers import Peer
from sidecar.probes.common import read_bounded
from sidecar.snapshot import Snapshot
from sidecar.state import CheckState
from sidecar.witness import PATH, UNREACHABLE, Account, parse_account, question, tally

TICK = 0.25  # seconds between two looks at the Snapshot
ASK_TIMEOUT = 1.0  # seconds a witness has to answer (it answers from memory)
MAX_ANSWER = 16384  # bytes of an answer read, at most
MIN_AGAIN = 0.5  # the second question comes at least this long after the first


class Witnesses:
    """Asks the peers about the panic checks failing here while the store is unreachable."""

    def __init__(
        self,
        *,
        monitor: Monitor,
        session: aiohttp.ClientSession,
        secret: str,
        instance: str,
        timeout: float = ASK_TIMEOUT,
        tick: float = TICK,
        clock: Callable[[], float] = time.time,
        hurry: Callable[[str], object] = lambda _: None,
    ) -> None:
        self._monitor = monitor
        self._hurry = hurry  # probe a check soon (the Scheduler's)
        self._session = session
        self._secret = secret
        self._instance = instance
        self._timeout = timeout
        self._tick = tick
        self._clock = clock
        self._log = logs.get("witness")
        # Per failing check: when it was last asked about, and the failure's start then.
        self._asked: dict[str, tuple[float, float | None]] = {}
        self._again: dict[str, float] = {}  # when to ask the second time, once per failure

    async def run(self) -> None:
        """Look every tick, ask when due, until cancelled."""
        while True:
            try:
                await self.step()
            except Exception:  # a bug must not end the witness: the next tick tries again
                self._log.exception("asking the peers failed unexpectedly")
            await asyncio.sleep(self._tick)

    async def step(self) -> None:
        """Ask the peers about the checks that are due, if any."""
        snap = self._monitor.snapshot
        failing = {s.name: s for s in asking(snap)}
        for name in self._asked.keys() - failing.keys():
            del self._asked[name]
            self._again.pop(name, None)
        now = self._clock()
        due = [s for s in failing.values() if self._due(s, now)]
        if not due:
            return
        names = [s.name for s in due]
        accounts = await self.ask(snap.fleet.peers, names)
        self._take(snap, due, accounts, now)

    def _due(self, state: CheckState, now: float) -> bool:
        asked = self._asked.get(state.name)
        if asked is None or asked[1] != state.since:  # a new failure
            return True
        again = self._again.get(state.name)
        return (again is not None and now >= again) or now - asked[0] >= state.check.interval

    def _take(
        self, snap: Snapshot, due: Sequence[CheckState], accounts: Sequence[Account], at: float
    ) -> None:
        """Hand the tally to the Monitor (unless a sync answer came meanwhile: Convex is back)
        and plan the second question of a failure the peers do not share yet."""
        fleet = self._monitor.snapshot.fleet
        if fleet.at != snap.fleet.at:
            return
        seen = tally((s.name for s in due), accounts, at=at)
        held = {}
        for state in due:
            if fleet.witnessed_outage(state, at) is None:
                continue
            if replace(fleet, witnessed=seen).witnessed_outage(state, at) is None:
                # Shared a moment ago, the peers now see it pass: the outage is ending (they
                # reached Convex first), or this is now a fault of this instance's own. The
                # last shared answer counts out its two intervals, and the check is probed
                # again soon: passing, it needs no excuse; failing still, it leaves then.
                held[state.name] = fleet.witnessed[state.name]
                self._hurry(state.name)
        self._monitor.apply_fleet(replace(fleet, witnessed={**fleet.witnessed, **seen, **held}))
        for state in due:
            first = self._asked.get(state.name, (0.0, None))[1] != state.since
            self._asked[state.name] = (at, state.since)
            self._again.pop(state.name, None)
            if not first or fleet.witnessed_outage(state, at) is not None:
                continue
            since = state.since if state.since is not None else at
            end = since + fleet.pending_window(state)
            again = max(at + MIN_AGAIN, end - self._timeout - 2 * self._tick)
            if again + self._timeout < end:
                self._again[state.name] = again

    async def ask(self, peers: Sequence[Peer], checks: Sequence[str]) -> list[Account]:
        """The answers of the peers that answered, asked concurrently, each within the
        timeout; a peer named like this instance is not asked."""
        unique = {p.instance: p for p in peers if p.instance != self._instance}
        answers = await asyncio.gather(*(self._ask(p, checks) for p in unique.values()))
        return [a for a in answers if a is not None and a.instance != self._instance]

    async def _ask(self, peer: Peer, checks: Sequence[str]) -> Account | None:
        body, headers = question(self._secret, instance=self._instance, checks=checks)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(
                    peer.url + PATH, data=body, headers=headers, allow_redirects=False
                ) as response:
                    raw, truncated = await read_bounded(response, MAX_ANSWER)
                    if response.status != 200 or truncated:
                        return None
                    return parse_account(json.loads(raw), checks)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._log.debug("a peer did not answer", peer=peer.instance, error=type(exc).__name__)
            return None


def asking(snap: Snapshot) -> list[CheckState]:
    """The checks to ask the peers about: the failing panic checks, while Convex cannot be
    reached and the last sync named peers."""
    store = snap.store
    if store.status != "error" or store.kind not in UNREACHABLE or not snap.fleet.peers:
        return []
    return [s for s in snap.states if s.check.panic and snap.statuses[s.name] == "fail"]
