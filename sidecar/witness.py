"""The peers' witness, without a socket: the signed question one instance asks another while
Convex cannot be reached, the door that admits it (signature, age, replay, rate), the answer
a witness gives from its Snapshot, and the tally the asker makes of the answers.

The question is `POST /_sidecar/witness` with the JSON body `{"instance", "ts", "checks",
"nonce"}` and the header `X-Health-Sidecar-Signature`: the store's HMAC-SHA256 (signing.py,
keyed by HEALTH_SIDECAR_SECRET, over the scheme, this path, the instance, `ts` and the body).
The answer holds statuses only: never outputs, URLs or secrets.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sidecar.fleet import Witnessed
from sidecar.snapshot import Snapshot
from sidecar.state import STATUSES, Status
from sidecar.store.signing import signature

PATH = "/_sidecar/witness"
HEADER = "X-Health-Sidecar-Signature"
MAX_BODY = 4096  # bytes of a question; more is refused (413) unread
MAX_ASKED = 32  # check names in one question
MAX_NAME = 200  # characters of an instance or check name
WINDOW_MS = 30_000  # a question older or newer than this is stale
RATE = 20.0  # questions a second per peer address, in the long run (peers behind one NAT share it)
BURST = 40.0  # and at once
MAX_ADDRESSES = 1024  # peer addresses the rate table remembers (least recent forgotten)
MAX_SEEN = 8192  # signatures remembered against replays, within the window
TARPIT = 1.0  # seconds a question over the rate waits for its 429
MAX_HELD = 1024  # questions waiting in the tarpit at once, at most
NONCE = re.compile(r"[0-9a-f]{32}")
SIGNATURE = re.compile(r"[0-9a-f]{64}")
# Store errors that mean Convex was not reached (its runtime did not answer).
UNREACHABLE = frozenset({"unavailable", "bad_response"})


@dataclass(frozen=True, slots=True)
class Question:
    """Who asks (its instance name), when (epoch ms), about which checks."""

    instance: str
    ts: int
    checks: tuple[str, ...]
    nonce: str


@dataclass(frozen=True, slots=True)
class Account:
    """A witness's answer: whether it reaches Convex (None: it cannot tell yet), and its
    status of each check asked ("unknown" for one it does not have)."""

    instance: str
    reaches_convex: bool | None
    statuses: Mapping[str, Status]

    def sees_failing(self, check: str) -> bool:
        """True when this witness fails `check` too and cannot count on Convex either: a
        witness that reaches Convex says the asker's trouble is the asker's own."""
        return self.statuses.get(check) == "fail" and self.reaches_convex is not True


class Refused(Exception):
    """A question refused before any work: `status` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def question(
    secret: str, *, instance: str, checks: Sequence[str], now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a signed question about `checks`."""
    ts = int(1000 * (time.time() if now is None else now))
    doc = {"instance": instance, "ts": ts, "checks": list(checks), "nonce": secrets.token_hex(16)}
    body = json.dumps(doc, separators=(",", ":"))
    sig = signature(secret, path=PATH, instance=instance, ts=ts, body=body)
    return body.encode(), {HEADER: sig, "Content-Type": "application/json"}


def parse_question(body: bytes) -> Question:
    """The question in `body`, strictly: exactly the four keys, bounded names; Refused(400)
    otherwise."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too
        raise Refused(400, "the body is not UTF-8 JSON") from None
    if not isinstance(doc, dict) or set(doc) != {"instance", "ts", "checks", "nonce"}:
        raise Refused(400, "the body must hold exactly instance, ts, checks and nonce")
    instance, ts, checks, nonce = doc["instance"], doc["ts"], doc["checks"], doc["nonce"]
    if not _name(instance):
        raise Refused(400, f"instance must be a string of 1 to {MAX_NAME} characters")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise Refused(400, "ts must be an integer (epoch ms)")
    if not isinstance(checks, list) or not 0 < len(checks) <= MAX_ASKED:
        raise Refused(400, f"checks must be a list of 1 to {MAX_ASKED} names")
    if not all(_name(c) for c in checks):
        raise Refused(400, f"each check must be a string of 1 to {MAX_NAME} characters")
    if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
        raise Refused(400, "nonce must be 32 lowercase hex characters")
    return Question(instance=instance, ts=ts, checks=tuple(dict.fromkeys(checks)), nonce=nonce)


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME


class Buckets:
    """A token bucket per peer address, in a bounded table: an address not seen lately is
    forgotten (and starts again with a full bucket, which costs a flood nothing)."""

    def __init__(
        self, *, rate: float = RATE, burst: float = BURST, size: int = MAX_ADDRESSES
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._size = size
        self._table: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, address: str, now: float) -> bool:
        """Take one token for `address`; False when its bucket is empty."""
        tokens, at = self._table.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        self._table[address] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._table) > self._size:
            self._table.popitem(last=False)
        return allowed


class Replays:
    """The signatures admitted within the window (bounded): one seen again is a replay."""

    def __init__(self, *, window: float = 2 * WINDOW_MS / 1000, size: int = MAX_SEEN) -> None:
        self._window = window
        self._size = size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first(self, key: str, now: float) -> bool:
        """Remember `key`; False when it was seen within the window. Raises Refused(429)
        when the table is full of keys still in the window (no replay can then be told)."""
        while self._seen and next(iter(self._seen.values())) <= now:
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        if len(self._seen) >= self._size:
            raise Refused(429, "too many questions in the window")
        self._seen[key] = now + self._window
        return True


class Door:
    """Admits a question only when it is within the rate of its peer address, signed with
    the fleet's secret, fresh (within WINDOW_MS of this clock) and seen for the first time."""

    def __init__(
        self,
        secret: str,
        *,
        clock: Callable[[], float] = time.time,
        buckets: Buckets | None = None,
        replays: Replays | None = None,
    ) -> None:
        self._secret = secret
        self._clock = clock
        self._buckets = buckets or Buckets()
        self._replays = replays or Replays()

    def admit(self, *, address: str | None, signed: str | None, body: bytes) -> Question:
        """The question in `body`, or Refused: 429 over the rate, 401 unsigned, 400
        malformed, 401 for a bad signature, a stale `ts` or a replay."""
        self.within_rate(address)
        return self.verify(signed=signed, body=body)

    def within_rate(self, address: str | None) -> None:
        """Refused(429) when `address` is over its rate (judged first: a flood costs no more)."""
        if not self._buckets.take(address or "?", self._clock()):
            raise Refused(429, "too many questions from this address")

    def verify(self, *, signed: str | None, body: bytes) -> Question:
        """The question in `body` if signed, fresh and new; Refused (401 or 400) otherwise."""
        now = self._clock()
        if signed is None or not SIGNATURE.fullmatch(signed):
            raise Refused(401, f"unsigned: {HEADER} must hold the 64 hex HMAC")
        asked = parse_question(body)
        expected = signature(
            self._secret, path=PATH, instance=asked.instance, ts=asked.ts, body=body.decode()
        )
        if not hmac.compare_digest(expected, signed):
            raise Refused(401, "bad signature")
        if abs(asked.ts - 1000 * now) > WINDOW_MS:
            raise Refused(401, "stale: ts is more than 30 s from this instance's clock")
        if not self._replays.first(signed, now):
            raise Refused(401, "replayed")
        return asked


class Desk:
    """The witness endpoint's parts: the door; `hurry`, what a question makes this instance
    do about each check asked that it has (probe it soon: the app wires Scheduler.hurry,
    which runs a check at most once per fast interval; by default nothing); and the tarpit:
    a question over its address's rate is answered 429 only after `tarpit` seconds (at most
    `max_held` at a time, the others at once), so that a flood on keep-alive connections gets
    one answer per connection and second, and costs the event loop next to nothing."""

    def __init__(self, door: Door, *, tarpit: float = TARPIT, max_held: int = MAX_HELD) -> None:
        self.door = door
        self.hurry: Callable[[str], object] = _nothing
        self.tarpit = tarpit
        self.max_held = max_held
        self.held = 0


def _nothing(_: str) -> None:
    return None


def answer(snap: Snapshot, asked: Question) -> dict[str, Any]:
    """What this instance tells a peer, from its Snapshot alone: its name, whether it reaches
    Convex, and its status of each check asked. Statuses only.

    The last sync may be a whole store period old: while the subscription to Convex that this
    instance held has dropped since, it cannot tell (None), since Convex may have gone for it
    too and its sync has not noticed yet. A "yes" from such a witness made the first instance
    to notice a shared outage a local fault at once (2 of 5 unready for 10 s in
    bench/fleet_verdicts.py's scenario 5 at the defaults)."""
    store = snap.store
    reaches: bool | None = None
    watched = snap.fleet.watched
    if store.status == "ok":
        reaches = True if watched is None or watched.subscribed else None
    elif store.status == "error":
        reaches = store.kind not in UNREACHABLE  # any other error: Convex's runtime answered
    return {
        "instance": snap.instance,
        "reaches_convex": reaches,
        "checks": {name: snap.statuses.get(name, "unknown") for name in asked.checks},
    }


def parse_account(value: Any, asked: Iterable[str]) -> Account:
    """A witness's answer, strictly; ValueError when it is not one."""
    if not isinstance(value, dict):
        raise ValueError("the answer is not an object")
    instance, reaches, checks = (
        value.get("instance"),
        value.get("reaches_convex"),
        value.get("checks"),
    )
    if not _name(instance) or not (reaches is None or isinstance(reaches, bool)):
        raise ValueError("the answer's instance or reaches_convex is malformed")
    if not isinstance(checks, dict):
        raise ValueError("the answer's checks is not an object")
    statuses: dict[str, Status] = {}
    for name in asked:
        status = checks.get(name, "unknown")
        if status not in STATUSES:
            raise ValueError("the answer holds an unknown status")
        statuses[name] = cast(Status, status)
    return Account(instance=cast(str, instance), reaches_convex=reaches, statuses=statuses)


def tally(checks: Iterable[str], accounts: Sequence[Account], *, at: float) -> dict[str, Witnessed]:
    """What the answers say of each check failing here: this instance counts as one that
    answered and sees it fail; each witness as one that answered, and as one that sees it
    fail when it fails the check and does not reach Convex either (`possible`: the witnesses
    that do not reach Convex, who may yet see it fail once they probe)."""
    out = {}
    cut_off = sum(1 for t in accounts if t.reaches_convex is not True)
    for check in checks:
        seeing = tuple(t.instance for t in accounts if t.sees_failing(check))
        out[check] = Witnessed(
            failing=1 + len(seeing),
            answered=1 + len(accounts),
            peers=seeing,
            at=at,
            possible=1 + cut_off,
        )
    return out
