"""One reactive Convex query, kept open over Convex's WebSocket sync protocol on aiohttp.

Shaped like Convex's own socket manager (convex/browser's web_socket_manager.js): one object with
named states, reconnect backoff, a server-inactivity timer, and the query set sent again after
each reconnect. Polling is the declared fallback state: while the subscription is `POLLING` its
owner's periodic sync carries the facts, and the socket is tried again after a while.

    connecting --first transition--> ready --socket lost--> connecting (backoff)
    connecting --failures_before_polling failed connects--> polling --polling_retry--> connecting
    any --message not understood, a fatal error or a failed query--> polling
    any --stop()--> stopped
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from sidecar import logs

_QUERY_ID = 0
# The path of Convex's Rust and Python clients. Without a version in it the server never splits
# a transition into TransitionChunks (it does so only for npm clients new enough to ask).
_SYNC_PATH = "/api/sync"


class State(enum.StrEnum):
    """Where the subscription is; only `READY` means values arrive as they change."""

    CONNECTING = "connecting"
    READY = "ready"
    POLLING = "polling"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Every wait of the subscription, in seconds, and its size bounds."""

    connect_timeout: float = 5.0
    # The server sends a sync Ping after 15 s without other messages (Convex's Rust client
    # gives up after 30 s, its JS client after 60 s).
    inactivity: float = 30.0
    send_timeout: float = 5.0
    close_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 16.0
    failures_before_polling: int = 5
    polling_retry: float = 60.0
    max_message_bytes: int = 1024 * 1024


class _Interrupted(Exception):
    """The connection ended or misbehaved in a way a reconnect can mend."""


class _Fallback(Exception):
    """Something a reconnect will not mend: fall back to polling."""


ValueCallback = Callable[[Any], None]
StateCallback = Callable[[State], None]


class Subscription:
    """Keeps one query (`path` with fixed `args`) subscribed; hands each new value to `on_value`.

    Values are Convex's encoded JSON as the server sends them (plain JSON for values without
    int64 or bytes). `on_value` and `on_state` are called on the event loop and must not block;
    an exception from them is logged and ignored. `start()` runs it in its own task, `stop()`
    ends it within `close_timeout` plus a second.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        url: str,
        path: str,
        args: dict[str, Any],
        on_value: ValueCallback,
        on_state: StateCallback | None = None,
        timing: Timing | None = None,
    ) -> None:
        self._session = session
        self._url = _sync_url(url)
        self._path = path
        self._args = args
        self._on_value = on_value
        self._on_state = on_state
        self._timing = timing or Timing()
        self._log = logs.get("subscription").bind(function=path)
        self._state = State.CONNECTING
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._connections = 0
        self._last_close_reason: str | None = "InitialConnect"
        self._max_ts: int | None = None
        self._value: Any = None
        self._has_value = False
        self._logged_not_understood = False
        self._polling_announced = False
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    def start(self) -> None:
        """Start keeping the subscription in a task of its own (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="subscription")

    async def stop(self) -> None:
        """Close the socket and end the task, waiting at most `close_timeout` + 1 s."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(self._timing.close_timeout + 1.0):
                    await task
        self._set_state(State.STOPPED, "stopped")

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            try:
                await self._connection()
            except _Fallback as exc:
                await self._poll(str(exc))
            except _Interrupted as exc:
                await self._after_failure(str(exc))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                await self._after_failure(_describe(exc))

    async def _after_failure(self, reason: str) -> None:
        self._last_close_reason = reason
        self._failures += 1
        if self._failures >= self._timing.failures_before_polling:
            await self._poll(f"{self._failures} connections failed, the last: {reason}")
            return
        self._set_state(State.CONNECTING, reason)
        await asyncio.sleep(self._backoff())

    async def _poll(self, reason: str) -> None:
        """The fallback: the owner's polling carries the facts; try the socket again later."""
        self._set_state(State.POLLING, reason)
        self._failures = 0
        # The next try starts afresh: a server that lost its history (restored, replaced) must
        # not refuse it for a timestamp it never issued.
        self._max_ts = None
        await asyncio.sleep(self._timing.polling_retry)
        self._set_state(State.CONNECTING, "retrying the subscription")

    def _backoff(self) -> float:
        """Jittered exponential backoff, as Convex's clients do: base x 2^failures, capped."""
        base = self._timing.backoff_initial * 2.0 ** (self._failures - 1)
        capped = min(base, self._timing.backoff_max)
        jitter: float = random.random() - 0.5  # not a secret: spreads reconnects over time
        return capped + capped * jitter

    async def _connection(self) -> None:
        """One socket: connect, send the query set, then take messages until it ends."""
        timing = self._timing
        async with asyncio.timeout(timing.connect_timeout):
            ws = await self._session.ws_connect(
                self._url,
                autoping=True,
                max_msg_size=timing.max_message_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_close=timing.close_timeout),
            )
        try:
            await self._send(ws, self._connect_message())
            await self._send(
                ws,
                {
                    "type": "ModifyQuerySet",
                    "baseVersion": 0,
                    "newVersion": 1,
                    "modifications": [self._add_query()],
                },
            )
            self._connections += 1
            version: dict[str, Any] = {"querySet": 0, "identity": 0, "ts": _encode_ts(0)}
            while True:
                try:
                    async with asyncio.timeout(timing.inactivity):
                        message = await ws.receive()
                except TimeoutError:
                    raise _Interrupted(
                        f"InactiveServer: nothing for {timing.inactivity:g}s"
                    ) from None
                version = self._handle(_decoded(message), version)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timing.close_timeout):
                    await ws.close()

    def _add_query(self) -> dict[str, Any]:
        return {"type": "Add", "queryId": _QUERY_ID, "udfPath": self._path, "args": [self._args]}

    def _connect_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": "Connect",
            "sessionId": str(uuid.uuid4()),
            "connectionCount": self._connections,
            "lastCloseReason": self._last_close_reason,
            "clientTs": int(time.time() * 1000),
        }
        if self._max_ts is not None:
            message["maxObservedTimestamp"] = _encode_ts(self._max_ts)
        return message

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(self._timing.send_timeout):
                await ws.send_str(json.dumps(message))
        except TimeoutError:
            raise _Interrupted(f"no send within {self._timing.send_timeout:g}s") from None

    # -------------------------------------------------------------- the messages

    def _handle(self, message: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
        """Applies one server message; returns the state version after it."""
        kind = message.get("type")
        if kind == "Ping":
            return version
        if kind == "Transition":
            return self._transition(message, version)
        if kind == "FatalError":
            raise _Fallback(f"the server ended the session: {_short(message.get('error'))}")
        raise self._not_understood(f"a message of type {_short(kind)}")

    def _transition(self, message: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
        start, end = message.get("startVersion"), message.get("endVersion")
        modifications = message.get("modifications")
        if not (
            isinstance(start, dict)
            and isinstance(end, dict)
            and _is_version(start)
            and _is_version(end)
            and isinstance(modifications, list)
        ):
            raise self._not_understood("a Transition without its versions or modifications")
        if start != version:
            raise _Interrupted(f"a transition from {start}, expected from {version}")
        for change in modifications:
            if not isinstance(change, dict) or change.get("queryId") != _QUERY_ID:
                continue
            if change.get("type") == "QueryUpdated" and "value" in change:
                self._deliver(change["value"])
            elif change.get("type") == "QueryFailed":
                self.last_error = _error_code(change)
                raise _Fallback(f"the query failed: {_short(change.get('errorMessage'))}")
        self._max_ts = max(self._max_ts or 0, _decode_ts(end["ts"]))
        self._failures = 0
        self.last_error = None
        self._set_state(State.READY, "subscribed")
        return dict(end)

    def _deliver(self, value: Any) -> None:
        if self._has_value and value == self._value:
            return
        self._value, self._has_value = value, True
        try:
            self._on_value(value)
        except Exception:
            self._log.exception("the subscription's value callback failed")

    def _not_understood(self, what: str) -> _Fallback:
        """Logged the first time only; then the subscription falls back to polling."""
        if not self._logged_not_understood:
            self._logged_not_understood = True
            self._log.warning("subscription message not understood: polling instead", what=what)
        return _Fallback(f"not understood: {what}")

    def _set_state(self, state: State, reason: str) -> None:
        if state == self._state:
            return
        before, self._state = self._state, state
        # State changes, not attempts: polling is announced once until the next READY.
        if state is State.READY:
            self._polling_announced = False
            self._log.info("subscribed", after=str(before))
        elif state is State.POLLING and not self._polling_announced:
            self._polling_announced = True
            self._log.warning("subscription unavailable: polling", reason=reason)
        elif before is State.READY and state is State.CONNECTING:
            self._log.info("subscription interrupted", state=str(state), reason=reason)
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                self._log.exception("the subscription's state callback failed")


# ------------------------------------------------------------------ helpers


def _sync_url(url: str) -> str:
    """`http(s)://host` -> `ws(s)://host/api/sync` (as Convex's Rust and Python clients)."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"a Convex URL is http(s)://..., got {parts.scheme}://")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + _SYNC_PATH, "", ""))


def _decoded(message: aiohttp.WSMessage) -> dict[str, Any]:
    """A text message's JSON object; anything else ends the connection or the subscription."""
    if message.type is aiohttp.WSMsgType.TEXT:
        try:
            body = json.loads(message.data)
        except ValueError:
            raise _Fallback("a text message that is not JSON") from None
        if not isinstance(body, dict):
            raise _Fallback("a JSON message that is not an object")
        return body
    if message.type is aiohttp.WSMsgType.ERROR:
        if isinstance(message.data, aiohttp.WebSocketError) and message.data.code == 1009:
            raise _Fallback(f"a message over the size bound: {message.data}")
        raise _Interrupted(f"WebSocket error: {message.data}")
    if message.type is aiohttp.WSMsgType.BINARY:
        raise _Fallback("a binary message")
    raise _Interrupted(f"closed ({message.type.name.lower()} {message.data or ''})".strip())


def _is_version(value: dict[str, Any]) -> bool:
    return (
        isinstance(value.get("querySet"), int)
        and isinstance(value.get("identity"), int)
        and isinstance(value.get("ts"), str)
        and _decode_ts(value["ts"]) >= 0
    )


def _encode_ts(ts: int) -> str:
    """Convex's u64 on the wire: base64 of 8 little-endian bytes."""
    return base64.b64encode(ts.to_bytes(8, "little")).decode()


def _decode_ts(text: str) -> int:
    """-1 for what is not a u64 in Convex's encoding."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return -1
    return int.from_bytes(raw, "little") if len(raw) == 8 else -1


def _error_code(change: dict[str, Any]) -> str | None:
    data = change.get("errorData")
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
