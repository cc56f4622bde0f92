"""This instance's side of the `health:*` Convex functions: signed calls, never the secret.

Two keys: `health:sync` is signed with the fleet's secret (HEALTH_SIDECAR_SECRET, every
sidecar's), `health:drain` and `health:fleet` with the operator's
(HEALTH_SIDECAR_OPERATOR_SECRET, the CLI's only). No replay is accepted: each call's `ts` is
newer than the one before (one more ms when two fall in the same ms), and a drain carries a
random nonce. A hello's answer gives a token, kept here and presented by every later sync."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidecar.store.client import ConvexClient, FunctionKind
from sidecar.store.errors import Unauthorized
from sidecar.store.messages import (
    FleetReport,
    SyncAnswer,
    SyncRequest,
    fleet_report,
    instance_names,
    sync_answer,
    sync_payload,
)
from sidecar.store.signing import signature

SYNC = "health:sync"
DRAIN = "health:drain"
FLEET = "health:fleet"
PING = "health:ping"


NO_OPERATOR_KEY = (
    "HEALTH_SIDECAR_OPERATOR_SECRET is not set: drain and fleet are signed with the operator "
    "key, never with a sidecar's HEALTH_SIDECAR_SECRET"
)


class HealthStore:
    """This instance's side of the `health:*` functions: signed calls, never the secrets."""

    def __init__(
        self,
        client: ConvexClient,
        *,
        secret: str,
        instance: str,
        version: str,
        ttl_seconds: float,
        period_seconds: float | None = None,
        operator_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._secret = secret
        self._operator_secret = operator_secret
        self._instance = instance
        self._version = version
        self._ttl_ms = round(ttl_seconds * 1000)
        self._period_ms = None if period_seconds is None else round(period_seconds * 1000)
        self._clock = clock
        self._heartbeat: str | None = None
        self._token: str | None = None
        self._last_ts = 0

    async def sync(self, request: SyncRequest) -> SyncAnswer:
        """Write the records that changed and refresh this instance's liveness. With `hello`
        (every configured check -> its fingerprint, on the first sync after a start) the answer
        carries the warm start and a new token, and stored rows of other or changed checks are
        dropped. Without it the heartbeat and token of the last hello go along; when Convex
        refuses them (Unauthorized: purged, expired, or the name taken over) they are
        forgotten, and the caller's next sync must be a hello."""
        hello = request.hello is not None
        payload = sync_payload(
            request,
            version=self._version,
            ttl_ms=self._ttl_ms,
            heartbeat=None if hello else self._heartbeat,
            token=None if hello else self._token,
            period_ms=self._period_ms,
        )
        try:
            answer = sync_answer(await self._signed("mutation", SYNC, payload, self._secret))
        except Unauthorized:
            self._heartbeat = self._token = None
            raise
        self._heartbeat = answer.heartbeat
        if answer.token is not None:
            self._token = answer.token
        return answer

    async def fleet(self, cursor: str | None = None) -> FleetReport:
        """One page of the live instances of the deployment, for `health-sidecar fleet`
        (operator key): from the start, or from the `cursor` the previous page gave."""
        payload = {} if cursor is None else {"cursor": cursor}
        return fleet_report(await self._signed("query", FLEET, payload, self._operator()))

    async def drain(
        self,
        *,
        drain: bool,
        instances: Sequence[str] | None,
        reason: str | None,
        by: str,
        for_ms: float | None,
    ) -> tuple[str, ...]:
        """Drain (or undrain) the named instances, or every live one (`instances` None); the
        deployment keeps an audit row of each. Returns the instances it applied to."""
        payload = {
            "action": "drain" if drain else "undrain",
            "instances": None if instances is None else list(instances),
            "reason": reason,
            "by": by,
            "forMs": for_ms,
            "nonce": secrets.token_hex(16),  # a replay of this call is refused
        }
        operator = self._operator()
        return instance_names(await self._signed("mutation", DRAIN, payload, operator))

    def _operator(self) -> str:
        if not self._operator_secret:
            raise Unauthorized(NO_OPERATOR_KEY)
        return self._operator_secret

    def _next_ts(self) -> int:
        """This call's timestamp (ms): the clock's, or one more than the last call's when the
        clock has not moved on (Convex accepts only a newer ts than the last it took)."""
        self._last_ts = max(int(self._clock() * 1000), self._last_ts + 1)
        return self._last_ts

    async def _signed(
        self, kind: FunctionKind, path: str, payload: Mapping[str, Any], secret: str
    ) -> Any:
        """Call `path` with the payload as a signed body (the instance, a timestamp and an
        HMAC keyed by `secret`; the secret itself stays here)."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        ts = self._next_ts()
        sig = signature(secret, path=path, instance=self._instance, ts=ts, body=body)
        args = {"instance": self._instance, "ts": ts, "sig": sig, "body": body}
        return await self._client.call(kind, path, args)
