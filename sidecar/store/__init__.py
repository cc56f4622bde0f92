"""Results live in Convex: the HTTP API client and the signed health-store API on top of it."""

from __future__ import annotations

from sidecar.store.client import ConvexClient
from sidecar.store.errors import (
    BadResponse,
    ClockSkew,
    FunctionError,
    RequestRejected,
    StoreError,
    Unauthorized,
    Unavailable,
)
from sidecar.store.health import PING, HealthStore
from sidecar.store.messages import SyncAnswer, Warm

__all__ = [
    "PING",
    "BadResponse",
    "ClockSkew",
    "ConvexClient",
    "FunctionError",
    "HealthStore",
    "RequestRejected",
    "StoreError",
    "SyncAnswer",
    "Unauthorized",
    "Unavailable",
    "Warm",
]
