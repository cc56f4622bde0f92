"""The messages of the `health:*` functions: what a call sends and what its answer holds,
and their JSON shapes on the wire (ages in ms; Convex writes every number as a float)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sidecar.peers import MAX_PEER_URL, Peer, peer_url
from sidecar.state import STATUSES, Record, Status
from sidecar.store.errors import BadResponse

# The peers a sync answer may name (issue 17): a bounded handful, each a name and a URL.
MAX_PEERS = 5
MAX_PEER_NAME = 200


@dataclass(frozen=True, slots=True)
class Warm:
    """The answer to a hello: this instance's stored results, all still current
    `confirmed_age_ms` ago (its last sync), by the deployment's clock."""

    confirmed_age_ms: float
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class Summary:
    """What the fleet sees of this instance (`health-sidecar fleet`), sent when it changes."""

    ready: bool
    reasons: tuple[str, ...]
    failing: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SharedAsk:
    """One shared check: the lease to ask for (or renew), and the holder's latest result."""

    check: str
    fingerprint: str
    lease_ms: float
    result: Record | None = None


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Everything one `health:sync` sends; only `records` (what changed) in steady state.

    `panic` lists the panic checks failing here (sent while any fails, and once empty after);
    `hold_ms` is how long Convex counts them without a refresh."""

    records: Sequence[Record] = ()
    hello: Mapping[str, str] | None = None
    summary: Summary | None = None
    panic: tuple[str, ...] | None = None
    hold_ms: float = 0.0
    shared: Sequence[SharedAsk] = ()
    leaving: bool = False  # the last sync before the process stops
    advertise: str | None = None  # with hello: where peers reach this sidecar (witnesses)
    want_peers: bool = False  # this instance knows no peer yet: Convex names some at once


@dataclass(frozen=True, slots=True)
class SharedAnswer:
    """The lease's verdict for one shared check, and the holder's latest result (ages by the
    deployment's clock)."""

    check: str
    holder: bool
    record: Record | None


@dataclass(frozen=True, slots=True)
class DrainAnswer:
    """A drain of this instance in force: its reason, who the caller said it was (`by`, a
    claim recorded as sent), how long ago it began, for how much longer, and which key signed
    it (`key`: "operator"; None for a drain recorded before the operator key existed)."""

    reason: str
    by: str
    age_ms: float
    remaining_ms: float | None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """What `health:sync` answered. `heartbeat` names this instance's liveness document: the
    next sync sends it back, so a steady-state sync touches that one small document only.
    `outages` maps each panic check sent as failing to (failing, live) instances; `live` is
    the fleet's live instances, this one included, when the answer says (None: it does not)."""

    now_ms: float
    expires_at_ms: float
    written: int
    resend: bool
    warm: Warm | None
    heartbeat: str
    outages: Mapping[str, tuple[int, int]]
    shared: tuple[SharedAnswer, ...]
    drain: DrainAnswer | None
    token: str | None = None  # a hello's answer: what every later sync presents
    live: int | None = None  # live instances as last counted (None: an older deployment)
    peers: tuple[Peer, ...] | None = None  # a rotating handful of peers (None: keep the last)


@dataclass(frozen=True, slots=True)
class Member:
    """One live instance as `health:fleet` lists it (what it last said of itself)."""

    instance: str
    version: str
    ready: bool | None
    reasons: tuple[str, ...]
    failing: tuple[str, ...]
    seen_age_ms: float
    drain: DrainAnswer | None


@dataclass(frozen=True, slots=True)
class FleetReport:
    """Every live instance, and the outage counts of the last minute: check -> (failing,
    live)."""

    members: tuple[Member, ...]
    outages: Mapping[str, tuple[int, int]]
    joins_last_hour: int | None = None  # new instance names registered (None: not reported)
    live: int | None = None  # counted instances, as last recounted (None: not reported)
    cursor: str | None = None  # where the next page starts; None: this was the last page


def _wire(record: Record) -> dict[str, Any]:
    return {
        "check": record.check,
        "fingerprint": record.fingerprint,
        "status": record.status,
        "ageMs": record.age_ms,
        "latencyMs": record.latency_ms,
        "output": record.output,
        "consecutiveFailures": record.consecutive_failures,
        "consecutiveSuccesses": record.consecutive_successes,
        "lastSuccessAgeMs": record.last_success_age_ms,
    }


def sync_payload(
    request: SyncRequest,
    *,
    version: str,
    ttl_ms: int,
    heartbeat: str | None,
    token: str | None = None,
    period_ms: int | None = None,
) -> dict[str, Any]:
    """The body of a `health:sync`: the fleet's keys only when the request has them. A sync
    that is not a hello presents the heartbeat and the token the last hello answered."""
    payload: dict[str, Any] = {
        "version": version,
        "ttlMs": ttl_ms,
        "hello": None if request.hello is None else dict(request.hello),
        "heartbeat": heartbeat,
        "results": [_wire(r) for r in request.records],
    }
    if token is not None:
        payload["token"] = token
    if period_ms is not None:
        payload["periodMs"] = period_ms
    if request.summary is not None:
        summary = request.summary
        payload["summary"] = {
            "ready": summary.ready,
            "reasons": list(summary.reasons),
            "failing": list(summary.failing),
        }
    if request.panic is not None:
        payload["panic"] = {"failing": list(request.panic), "holdMs": request.hold_ms}
    if request.leaving:
        payload["leaving"] = True
    if request.hello is not None and request.advertise is not None:
        payload["advertise"] = request.advertise
    if request.want_peers:
        payload["wantPeers"] = True
    if request.shared:
        payload["shared"] = [
            {
                "check": ask.check,
                "fingerprint": ask.fingerprint,
                "leaseMs": ask.lease_ms,
                "result": None if ask.result is None else _wire(ask.result),
            }
            for ask in request.shared
        ]
    return payload


def fleet_report(value: Any) -> FleetReport:
    """The answer of `health:fleet`."""
    report = as_object(value, "fleet")
    return FleetReport(
        members=tuple(_member(item) for item in as_list(report, "instances")),
        outages=_outages(report),
        joins_last_hour=_optional_count(report, "joinsLastHour"),
        live=_optional_count(report, "live"),
        cursor=None if report.get("isDone", True) is True else as_string(report, "continueCursor"),
    )


def _optional_count(row: Mapping[str, Any], key: str) -> int | None:
    """A count an older deployment may not send: a missing key is None."""
    return None if row.get(key) is None else int(as_number(row, key))


def _optional_string(row: Mapping[str, Any], key: str) -> str | None:
    return None if row.get(key) is None else as_string(row, key)


def instance_names(value: Any) -> tuple[str, ...]:
    """The answer of `health:drain`: the instances it applied to."""
    return _strings(as_object(value, "drain"), "instances")


def _outages(answer: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    return {
        as_string(o, "check"): (int(as_number(o, "failing")), int(as_number(o, "live")))
        for o in (as_object(item, "outage") for item in as_list(answer, "outages"))
    }


def sync_answer(value: Any) -> SyncAnswer:
    answer = as_object(value, "answer")
    resend = answer.get("resend")
    if not isinstance(resend, bool):
        raise BadResponse("'resend' is not a boolean")
    warm = answer.get("warm")
    drain = answer.get("drain")
    return SyncAnswer(
        now_ms=as_number(answer, "now"),
        expires_at_ms=as_number(answer, "expiresAt"),
        written=int(as_number(answer, "written")),
        resend=resend,
        warm=None if warm is None else _warm(warm),
        heartbeat=as_string(answer, "heartbeat"),
        outages=_outages(answer),
        shared=tuple(_shared(item) for item in as_list(answer, "shared")),
        drain=None if drain is None else _drain(drain),
        token=_optional_string(answer, "token"),
        live=_optional_count(answer, "live"),
        peers=_peers(answer),
    )


@dataclass(frozen=True, slots=True)
class WatchedDrain:
    """The drain in this instance's mailbox: server times in ms (`until` None: no end)."""

    reason: str
    by: str
    at_ms: float
    until_ms: float | None


@dataclass(frozen=True, slots=True)
class WatchedVerdict:
    """Convex's last count of one panic check; `since_ms` (server time) when it changed."""

    check: str
    failing: int
    live: int
    since_ms: float


@dataclass(frozen=True, slots=True)
class WatchAnswer:
    """A value of the `health:watch` subscription (server times in ms)."""

    drain: WatchedDrain | None
    verdicts: tuple[WatchedVerdict, ...]


def watch_answer(value: Any) -> WatchAnswer:
    """A value of `health:watch`; BadResponse for anything else."""
    answer = as_object(value, "watch")
    drain = answer.get("drain")
    verdicts = []
    for item in as_list(answer, "verdicts"):
        row = as_object(item, "verdict")
        verdicts.append(
            WatchedVerdict(
                check=as_string(row, "check"),
                failing=int(as_number(row, "failing")),
                live=int(as_number(row, "live")),
                since_ms=as_number(row, "since"),
            )
        )
    return WatchAnswer(
        drain=None if drain is None else _watched_drain(drain),
        verdicts=tuple(verdicts),
    )


def _watched_drain(value: Any) -> WatchedDrain:
    drain = as_object(value, "drain")
    until = drain.get("until")
    return WatchedDrain(
        reason=as_string(drain, "reason"),
        by=as_string(drain, "by"),
        at_ms=as_number(drain, "at"),
        until_ms=None if until is None else as_number(drain, "until"),
    )


def _peers(answer: Mapping[str, Any]) -> tuple[Peer, ...] | None:
    """The answer's `peers` (None: the key is absent, Convex did not read them this time),
    each checked: a bounded name and an http(s) URL with a host; more than MAX_PEERS is not
    an answer of these functions."""
    if answer.get("peers") is None:
        return None
    items = as_list(answer, "peers")
    if len(items) > MAX_PEERS:
        raise BadResponse(f"'peers' holds {len(items)} entries; at most {MAX_PEERS}")
    return tuple(_peer(item) for item in items)


def _peer(value: Any) -> Peer:
    item = as_object(value, "peer")
    instance = as_string(item, "instance")
    url = as_string(item, "url")
    if not 0 < len(instance) <= MAX_PEER_NAME:
        raise BadResponse(f"a peer's 'instance' must be 1 to {MAX_PEER_NAME} characters")
    if not peer_url(url):
        raise BadResponse(
            f"a peer's 'url' must be an http:// or https:// URL with a host, "
            f"at most {MAX_PEER_URL} characters, without credentials"
        )
    return Peer(instance=instance, url=url)


def _shared(value: Any) -> SharedAnswer:
    item = as_object(value, "shared answer")
    holder = item.get("holder")
    if not isinstance(holder, bool):
        raise BadResponse("'holder' is not a boolean")
    result = item.get("result")
    return SharedAnswer(
        check=as_string(item, "check"),
        holder=holder,
        record=None if result is None else _record(result),
    )


def _member(value: Any) -> Member:
    item = as_object(value, "instance")
    ready = item.get("ready")
    if ready is not None and not isinstance(ready, bool):
        raise BadResponse("'ready' is not a boolean")
    drain = item.get("drain")
    return Member(
        instance=as_string(item, "instance"),
        version=as_string(item, "version"),
        ready=ready,
        reasons=_strings(item, "reasons"),
        failing=_strings(item, "failing"),
        seen_age_ms=as_number(item, "seenAgeMs"),
        drain=None if drain is None else _drain(drain),
    )


def _strings(row: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = as_list(row, key)
    if not all(isinstance(v, str) for v in values):
        raise BadResponse(f"{key!r} is not a list of strings")
    return tuple(values)


def _drain(value: Any) -> DrainAnswer:
    drain = as_object(value, "drain")
    remaining = drain.get("remainingMs")
    return DrainAnswer(
        reason=as_string(drain, "reason"),
        by=as_string(drain, "by"),
        age_ms=as_number(drain, "ageMs"),
        remaining_ms=None if remaining is None else as_number(drain, "remainingMs"),
        key=_optional_string(drain, "key"),
    )


def as_list(row: Mapping[str, Any], key: str) -> list[Any]:
    value = row.get(key)
    if not isinstance(value, list):
        raise BadResponse(f"{key!r} is not a list")
    return value


def _warm(value: Any) -> Warm:
    warm = as_object(value, "warm")
    rows = warm.get("results")
    if not isinstance(rows, list):
        raise BadResponse("'warm.results' is not a list")
    return Warm(
        confirmed_age_ms=as_number(warm, "confirmedAgeMs"),
        records=tuple(_record(row) for row in rows),
    )


def _record(value: Any) -> Record:
    row = as_object(value, "warm result")
    status = as_string(row, "status")
    if status not in STATUSES:
        raise BadResponse(f"unknown status {status[:20]!r}")
    last = row.get("lastSuccessAgeMs")
    return Record(
        check=as_string(row, "check"),
        fingerprint=as_string(row, "fingerprint"),
        status=cast(Status, status),
        age_ms=as_number(row, "ageMs"),
        latency_ms=as_number(row, "latencyMs"),
        output=as_string(row, "output"),
        consecutive_failures=int(as_number(row, "consecutiveFailures")),
        consecutive_successes=int(as_number(row, "consecutiveSuccesses")),
        last_success_age_ms=None if last is None else as_number(row, "lastSuccessAgeMs"),
    )


def as_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{what} is not an object")
    return value


def as_string(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise BadResponse(f"{key!r} is not a string")
    return value


def as_number(row: Mapping[str, Any], key: str) -> float:
    """Convex writes every number as a float (1.0); accept ints too, refuse the rest."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadResponse(f"{key!r} is not a number")
    return float(value)
