"""Signed calls: the shared secret keys an HMAC and never crosses the wire itself."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

SCHEME = "health-sidecar/1"
FINGERPRINT_CHARS = 16


def signature(secret: str, *, path: str, instance: str, ts: int, body: str) -> str:
    """Lowercase hex HMAC-SHA256, keyed by `secret`, over the function path, the instance, the
    caller's timestamp (ms) and the body: what `convex/health.ts` verifies."""
    message = f"{SCHEME}\n{path}\n{instance}\n{ts}\n{body}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def fingerprint(secret: str, definition: Mapping[str, Any]) -> str:
    """A short, keyed hash of what a check probes. Keyed, so that a stored fingerprint reveals
    nothing about a header or URL token the definition may hold."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = f"{SCHEME}/fingerprint\n{canonical}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return digest[:FINGERPRINT_CHARS]
