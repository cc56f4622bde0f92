"""The only errors the store client raises: every failure maps to one of these."""

from __future__ import annotations

from typing import Any


class StoreError(Exception):
    """Base of every store failure; `kind` is a short, stable name for metrics and logs."""

    kind = "error"


class Unauthorized(StoreError):
    """Convex refused the shared secret (ConvexError code "unauthorized", or HTTP 401/403)."""

    kind = "unauthorized"


class ClockSkew(StoreError):
    """Convex refused the call's timestamp (ConvexError code "clock_skew"): this host's clock
    is more than 30 s from the deployment's."""

    kind = "clock_skew"


class FunctionError(StoreError):
    """A Convex function threw; `data` carries its `errorData` (None for a plain Error)."""

    kind = "function_error"

    def __init__(self, message: str, *, data: Any = None) -> None:
        super().__init__(message)
        self.data = data

    @property
    def code(self) -> str | None:
        """The `errorData.code` the functions use to tell errors apart, if any."""
        if isinstance(self.data, dict):
            code = self.data.get("code")
            return code if isinstance(code, str) else None
        return None


class RequestRejected(StoreError):
    """Convex rejected the request itself (4xx with `{code, message}`): unknown or internal
    function, malformed arguments. Usually means the functions are not deployed."""

    kind = "request_rejected"

    def __init__(self, message: str, *, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Unavailable(StoreError):
    """Convex could not be reached in time: refused, reset, timed out, or answered 5xx."""

    kind = "unavailable"


class BadResponse(StoreError):
    """Convex answered something that is not its wire format: not JSON, or the wrong shape."""

    kind = "bad_response"
