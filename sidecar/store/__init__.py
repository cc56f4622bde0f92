"""Results live in Convex: the HTTP API client and the health-store API on top of it."""

from __future__ import annotations

from sidecar.store.client import ConvexClient
from sidecar.store.errors import (
    BadResponse,
    FunctionError,
    RequestRejected,
    StoreError,
    Unauthorized,
    Unavailable,
)
from sidecar.store.health import CheckRecord, Claim, HealthStore, Status, StoredResult

__all__ = [
    "BadResponse",
    "CheckRecord",
    "Claim",
    "ConvexClient",
    "FunctionError",
    "HealthStore",
    "RequestRejected",
    "Status",
    "StoreError",
    "StoredResult",
    "Unauthorized",
    "Unavailable",
]
