"""The health-store API on top of Convex: report a round, read an instance or the fleet, claim."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sidecar.store.client import ConvexClient, FunctionKind
from sidecar.store.errors import BadResponse, StoreError

Status = Literal["pass", "warn", "fail", "unknown"]
STATUSES: frozenset[str] = frozenset({"pass", "warn", "fail", "unknown"})


@dataclass(frozen=True, slots=True)
class CheckRecord:
    """One check's result as the sidecar reports it (times in ms since the epoch)."""

    check: str
    status: Status
    observed_at_ms: float
    latency_ms: float
    output: str
    consecutive_failures: int
    consecutive_successes: int
    last_success_at_ms: float | None

    def to_args(self) -> dict[str, Any]:
        """The record in the argument shape of `health:report`."""
        return {
            "check": self.check,
            "status": self.status,
            "observedAt": self.observed_at_ms,
            "latencyMs": self.latency_ms,
            "output": self.output,
            "consecutiveFailures": self.consecutive_failures,
            "consecutiveSuccesses": self.consecutive_successes,
            "lastSuccessAt": self.last_success_at_ms,
        }


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A row as Convex keeps it: the record, whose instance reported it, and when it expires."""

    instance: str
    record: CheckRecord
    expires_at_ms: float


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer of `health:claim`: a fresh shared result, a lease granted, or neither."""

    granted: bool
    result: StoredResult | None
    holder: str | None
    lease_expires_at_ms: float | None


class HealthStore:
    """The sidecar's view of the `health:*` Convex functions for one instance."""

    def __init__(
        self, client: ConvexClient, *, secret: str, instance: str, ttl_seconds: float
    ) -> None:
        self._client = client
        self._secret = secret
        self._instance = instance
        self._ttl_seconds = ttl_seconds

    @property
    def instance(self) -> str:
        """The instance name rows are reported under."""
        return self._instance

    async def report(self, records: Sequence[CheckRecord], *, now_ms: float) -> float:
        """Upsert one round of results; returns when they expire (ms since the epoch)."""
        where = "health:report"
        value = await self._call(
            "mutation",
            where,
            now_ms,
            instance=self._instance,
            ttlSeconds=self._ttl_seconds,
            results=[r.to_args() for r in records],
        )
        return _number(_object(value, where), "expiresAt", where)

    async def instance_results(self, *, now_ms: float) -> list[StoredResult]:
        """This instance's unexpired results (for the warm start)."""
        where = "health:instance"
        return _rows(await self._call("query", where, now_ms, instance=self._instance), where)

    async def fleet(self, *, now_ms: float) -> list[StoredResult]:
        """The unexpired results of every instance."""
        return _rows(await self._call("query", "health:fleet", now_ms), "health:fleet")

    async def claim(self, check: str, *, now_ms: float, fresh_ms: float, lease_ms: float) -> Claim:
        """Ask for a shared check: a fresh result from any instance, or the lease to probe it."""
        where = "health:claim"
        value = _object(
            await self._call(
                "mutation",
                where,
                now_ms,
                check=check,
                instance=self._instance,
                freshMs=fresh_ms,
                leaseMs=lease_ms,
            ),
            where,
        )
        granted = value.get("granted")
        if not isinstance(granted, bool):
            raise BadResponse(f"{where}: 'granted' is not a boolean")
        result = value.get("result")
        holder = value.get("holder")
        if holder is not None and not isinstance(holder, str):
            raise BadResponse(f"{where}: 'holder' is not a string")
        lease = value.get("leaseExpiresAt")
        return Claim(
            granted=granted,
            result=None if result is None else _row(result, where),
            holder=holder,
            lease_expires_at_ms=None if lease is None else _number(value, "leaseExpiresAt", where),
        )

    async def _call(self, kind: FunctionKind, path: str, now_ms: float, **args: Any) -> Any:
        """Call a function with the secret and `now`; no error text may carry the secret (a
        Convex validation error quotes the arguments it refused)."""
        try:
            return await self._client.call(
                kind, path, {"secret": self._secret, "now": now_ms, **args}
            )
        except StoreError as exc:
            exc.args = tuple(_scrub(str(a), self._secret) for a in exc.args)
            raise


def _scrub(text: str, secret: str) -> str:
    """`text` with every appearance of `secret` (raw or JSON-escaped) masked."""
    for form in {secret, json.dumps(secret)[1:-1]}:
        if form:
            text = text.replace(form, "**********")
    return text


def _rows(value: Any, where: str) -> list[StoredResult]:
    if not isinstance(value, list):
        raise BadResponse(f"{where}: expected a list of rows")
    return [_row(item, where) for item in value]


def _row(item: Any, where: str) -> StoredResult:
    row = _object(item, where)
    status = _string(row, "status", where)
    if status not in STATUSES:
        raise BadResponse(f"{where}: unknown status {status[:20]!r}")
    last_success = row.get("lastSuccessAt")
    record = CheckRecord(
        check=_string(row, "check", where),
        status=cast(Status, status),
        observed_at_ms=_number(row, "observedAt", where),
        latency_ms=_number(row, "latencyMs", where),
        output=_string(row, "output", where),
        consecutive_failures=int(_number(row, "consecutiveFailures", where)),
        consecutive_successes=int(_number(row, "consecutiveSuccesses", where)),
        last_success_at_ms=None if last_success is None else _number(row, "lastSuccessAt", where),
    )
    return StoredResult(
        instance=_string(row, "instance", where),
        record=record,
        expires_at_ms=_number(row, "expiresAt", where),
    )


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadResponse(f"{where}: expected an object")
    return value


def _string(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise BadResponse(f"{where}: {key!r} is not a string")
    return value


def _number(row: Mapping[str, Any], key: str, where: str) -> float:
    """Convex writes every number as a float (1.0); accept ints too, refuse the rest."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise BadResponse(f"{where}: {key!r} is not a number")
    return float(value)
