"""An async client for Convex's HTTP API (`POST /api/query` and `/api/mutation`) on aiohttp."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import aiohttp

from sidecar.store.errors import (
    BadResponse,
    ClockSkew,
    FunctionError,
    RequestRejected,
    StoreError,
    Unauthorized,
    Unavailable,
)

FunctionKind = Literal["query", "mutation", "action"]

# Convex answers a function failure with 200 or, to some clients, 560 ("UDF failed").
_FUNCTION_FAILED_STATUSES = frozenset({200, 560})
MAX_BODY_BYTES = 4 * 1024 * 1024
_UNAUTHORIZED_CODE = "unauthorized"
_CLOCK_SKEW_CODE = "clock_skew"


class ConvexClient:
    """Calls Convex functions by path; raises only `StoreError` subclasses.

    Every call is bounded by `timeout` seconds (connect, send and the whole body), and a body
    larger than `max_body` bytes (4 MiB) is refused rather than buffered.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        timeout: float,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self._session = session
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._max_body = max_body

    async def query(self, path: str, args: dict[str, Any]) -> Any:
        """Run a public query and return its value."""
        return await self.call("query", path, args)

    async def call(self, kind: FunctionKind, path: str, args: dict[str, Any]) -> Any:
        """Run a function of the given kind; map every failure to a typed `StoreError`."""
        body = {"path": path, "args": args, "format": "json"}
        try:
            async with asyncio.timeout(self._timeout):
                status, raw = await self._post(f"{self._base}/api/{kind}", body)
        except StoreError:
            raise
        except TimeoutError as exc:
            raise Unavailable(f"{path}: no answer within {self._timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unavailable(f"{path}: {_describe(exc)}") from exc
        return _decode(path, status, raw)

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        async with self._session.post(
            url,
            json=body,
            allow_redirects=False,
            headers={"Accept": "application/json"},
        ) as resp:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > self._max_body:
                    raise BadResponse(f"response body over {self._max_body} bytes")
            return resp.status, bytes(raw)


def _decode(path: str, status: int, raw: bytes) -> Any:
    """Turn one HTTP answer into a value or a typed error."""
    if status >= 500 and status != 560:
        raise Unavailable(f"{path}: HTTP {status}")
    if 300 <= status < 400:
        raise BadResponse(
            f"{path}: redirected (HTTP {status}): use the deployment's own URL, not a redirect"
        )
    if status == 413:
        raise RequestRejected(f"{path}: HTTP 413: the request is too large", status=status)
    if status in (401, 403):
        raise Unauthorized(f"{path}: HTTP {status}")
    if status in (408, 429):
        raise Unavailable(f"{path}: HTTP {status}")
    payload = _parse_json(path, status, raw)
    if 400 <= status < 500:
        code = payload.get("code")
        message = payload.get("message")
        raise RequestRejected(
            f"{path}: HTTP {status} {code}: {message}",
            code=code if isinstance(code, str) else None,
            status=status,
        )
    if status not in _FUNCTION_FAILED_STATUSES:
        raise BadResponse(f"{path}: unexpected HTTP {status}")
    outcome = payload.get("status")
    if outcome == "success" and "value" in payload:
        return payload["value"]
    if outcome == "error":
        data = payload.get("errorData")
        text = f"{path}: {_error_text(payload.get('errorMessage'), data)}"
        if isinstance(data, dict) and data.get("code") == _UNAUTHORIZED_CODE:
            raise Unauthorized(text)
        if isinstance(data, dict) and data.get("code") == _CLOCK_SKEW_CODE:
            raise ClockSkew(text)
        raise FunctionError(text, data=data)
    raise BadResponse(f"{path}: HTTP {status} without a status of success or error")


def _error_text(message: Any, data: Any) -> str:
    """What a function error says. A production deployment answers `Server Error` for every
    error but keeps a ConvexError's data: the functions put their `code` and `message` there."""
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        code = data.get("code")
        return f"{code}: {data['message']}" if isinstance(code, str) else str(data["message"])
    return message if isinstance(message, str) else "function failed"


def _parse_json(path: str, status: int, raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadResponse(f"{path}: HTTP {status} with a body that is not JSON") from exc
    if not isinstance(payload, dict):
        raise BadResponse(f"{path}: HTTP {status} with JSON that is not an object")
    return payload


def _describe(exc: BaseException) -> str:
    """A short, one-line description of a transport error."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."
