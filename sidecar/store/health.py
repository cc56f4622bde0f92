"""This instance's side of the `health:*` Convex functions: signed calls, never the secret."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sidecar.store.client import ConvexClient, FunctionKind
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

    async def sync(self, request: SyncRequest) -> SyncAnswer:
        """Write the records that changed and refresh this instance's liveness. With `hello`
        (every configured check -> its fingerprint, on the first sync after a start) the answer
        carries the warm start, and stored rows of other or changed checks are dropped."""
        heartbeat = None if request.hello is not None else self._heartbeat
        payload = sync_payload(
            request, version=self._version, ttl_ms=self._ttl_ms, heartbeat=heartbeat
        )
        answer = sync_answer(await self._signed("mutation", SYNC, payload))
        self._heartbeat = answer.heartbeat
        return answer

    async def fleet(self) -> FleetReport:
        """Every live instance of the deployment, for `health-sidecar fleet`."""
        return fleet_report(await self._signed("query", FLEET, {}))

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
        }
        return instance_names(await self._signed("mutation", DRAIN, payload))

    async def _signed(self, kind: FunctionKind, path: str, payload: Mapping[str, Any]) -> Any:
        """Call `path` with the payload as a signed body (the instance, a timestamp and an
        HMAC keyed by the secret; the secret itself stays here)."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        ts = int(self._clock() * 1000)
        sig = signature(self._secret, path=path, instance=self._instance, ts=ts, body=body)
        args = {"instance": self._instance, "ts": ts, "sig": sig, "body": body}
        return await self._client.call(kind, path, args)
