"""The health store on top of Convex: one signed `health:sync` call carries everything."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sidecar.state import STATUSES, Record, Status
from sidecar.store.client import ConvexClient, FunctionKind
from sidecar.store.errors import BadResponse
from sidecar.store.signing import signature

SYNC = "health:sync"
PING = "health:ping"


@dataclass(frozen=True, slots=True)
class Warm:
    """The answer to a hello: this instance's stored results, all still current
    `confirmed_age_ms` ago (its last sync), by the deployment's clock."""

    confirmed_age_ms: float
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class SyncAnswer:
    """What `health:sync` answered. `heartbeat` names this instance's liveness document: the
    next sync sends it back, so a steady-state sync touches that one small document only."""

    now_ms: float
    expires_at_ms: float
    written: int
    resend: bool
    warm: Warm | None
    heartbeat: str


class HealthStore:
    """This instance's side of the `health:*` functions: signed calls, never the secret."""

    def __init__(
        self,
        client: ConvexClient,
        *,
        secret: str,
        instance: str,
        version: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._secret = secret
        self._instance = instance
        self._version = version
        self._ttl_ms = round(ttl_seconds * 1000)
        self._clock = clock
        self._heartbeat: str | None = None

    async def sync(
        self, records: Sequence[Record], *, hello: Mapping[str, str] | None = None
    ) -> SyncAnswer:
        """Write the records that changed and refresh this instance's liveness. With `hello`
        (every configured check -> its fingerprint, on the first sync after a start) the answer
        carries the warm start, and stored rows of other or changed checks are dropped."""
        payload = {
            "version": self._version,
            "ttlMs": self._ttl_ms,
            "hello": None if hello is None else dict(hello),
            "heartbeat": None if hello is not None else self._heartbeat,
            "results": [_wire(r) for r in records],
        }
        answer = _answer(await self._signed("mutation", SYNC, payload))
        self._heartbeat = answer.heartbeat
        return answer

    async def _signed(self, kind: FunctionKind, path: str, payload: Mapping[str, Any]) -> Any:
        """Call `path` with the payload as a signed body (the instance, a timestamp and an
        HMAC keyed by the secret; the secret itself stays here)."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        ts = int(self._clock() * 1000)
        sig = signature(self._secret, path=path, instance=self._instance, ts=ts, body=body)
        args = {"instance": self._instance, "ts": ts, "sig": sig, "body": body}
        return await self._client.call(kind, path, args)


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


def _answer(value: Any) -> SyncAnswer:
    answer = _object(value, "answer")
    resend = answer.get("resend")
    if not isinstance(resend, bool):
        raise BadResponse(f"{SYNC}: 'resend' is not a boolean")
    warm = answer.get("warm")
    return SyncAnswer(
        now_ms=_number(answer, "now"),
        expires_at_ms=_number(answer, "expiresAt"),
        written=int(_number(answer, "written")),
        resend=resend,
        warm=None if warm is None else _warm(warm),
        heartbeat=_string(answer, "heartbeat"),
    )


def _warm(value: Any) -> Warm:
    warm = _object(value, "warm")
    rows = warm.get("results")
    if not isinstance(rows, list):
        raise BadResponse(f"{SYNC}: 'warm.results' is not a list")
    return Warm(
        confirmed_age_ms=_number(warm, "confirmedAgeMs"),
        records=tuple(_record(row) for row in rows),
    )


def _record(value: Any) -> Record:
    row = _object(value, "warm result")
    status = _string(row, "status")
    if status not in STATUSES:
        raise BadResponse(f"{SYNC}: unknown status {status[:20]!r}")
    last = row.get("lastSuccessAgeMs")
    return Record(
        check=_string(row, "check"),
        fingerprint=_string(row, "fingerprint"),
        status=cast(Status, status),
        age_ms=_number(row, "ageMs"),
        latency_ms=_number(row, "latencyMs"),
        output=_string(row, "output"),
        consecutive_failures=int(_number(row, "consecutiveFailures")),
        consecutive_successes=int(_number(row, "consecutiveSuccesses")),
        last_success_age_ms=None if last is None else _number(row, "lastSuccessAgeMs"),
    )


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{SYNC}: {what} is not an object")
    return value


def _string(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise BadResponse(f"{SYNC}: {key!r} is not a string")
    return value


def _number(row: Mapping[str, Any], key: str) -> float:
    """Convex writes every number as a float (1.0); accept ints too, refuse the rest."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadResponse(f"{SYNC}: {key!r} is not a number")
    return float(value)
