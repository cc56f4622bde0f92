"""The sidecar's own subscription client (sidecar/store/subscription.py) against dev/convex-local's
sync protocol (its test-only functions) and the faults of its /_dev/sync routes: values as they
change, a socket dropped mid-transition, a server restarted with no data, a slow reader, a silent
server, a message it does not understand, a refused upgrade, a failed query."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar.store import ConvexClient
from sidecar.store.subscription import State, Subscription, Timing
from tests.support import convex, procs
from tests.support.procs import Proc

FAST = Timing(
    connect_timeout=2.0,
    inactivity=1.0,
    backoff_initial=0.05,
    backoff_max=0.2,
    failures_before_polling=3,
    polling_retry=0.5,
)
WAIT = 10.0


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    with procs.convex_local(
        tmp_path_factory.mktemp("convex-sub") / "out.log", functions="test"
    ) as p:
        yield p


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Seen:
    """What a subscription handed over: its values and its states, in order."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.states: list[State] = []


@contextlib.asynccontextmanager
async def subscribed(
    session: aiohttp.ClientSession,
    url: str,
    name: str,
    *,
    path: str = "tallies:get",
    extra: dict[str, Any] | None = None,
    timing: Timing = FAST,
    on_value: Callable[[Any], None] | None = None,
) -> AsyncIterator[tuple[Subscription, Seen]]:
    """A started Subscription to `path` and what it hands over, for a block; stopped after."""
    seen = Seen()

    def value(v: Any) -> None:
        seen.values.append(v)
        if on_value is not None:
            on_value(v)

    sub = Subscription(
        session,
        url=url,
        path=path,
        args={"name": name, **(extra or {})},
        on_value=value,
        on_state=seen.states.append,
        timing=timing,
    )
    sub.start()
    try:
        yield sub, seen
    finally:
        await sub.stop()


async def until(predicate: Callable[[], bool], what: str, within: float = WAIT) -> None:
    """Waits (bounded) until `predicate` holds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def bump(session: aiohttp.ClientSession, url: str, name: str) -> float:
    value: float = await ConvexClient(session, url=url, timeout=5.0).call(
        "mutation", "tallies:bump", {"name": name}
    )
    return value


async def test_values_as_they_change_then_stopped(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    async with subscribed(session, stand_in.url, "values") as (sub, seen):
        await until(lambda: seen.values == [0], "the first value")
        assert sub.state is State.READY
        await bump(session, stand_in.url, "values")
        await bump(session, stand_in.url, "values")
        await until(lambda: seen.values[-1:] == [2], "the value after two mutations")
        assert seen.values in ([0, 1, 2], [0, 2])
    assert seen.states == [State.READY, State.STOPPED]
    sockets = 1
    for _ in range(100):
        sockets = await convex.sync_sockets(stand_in.url)
        if sockets == 0:
            break
        await asyncio.sleep(0.05)
    assert sockets == 0


async def test_a_socket_dropped_mid_transition_reconnects_and_replays_the_query(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    async with subscribed(session, stand_in.url, "cut") as (sub, seen):
        await until(lambda: sub.state is State.READY, "ready")
        answer = await convex.sync_fault(stand_in.url, "drop", {"how": "midTransition"})
        assert answer["dropped"] >= 1
        await until(lambda: State.CONNECTING in seen.states, "the reconnect")
        await until(lambda: sub.state is State.READY, "ready again")
        await bump(session, stand_in.url, "cut")
        await until(lambda: seen.values[-1:] == [1], "the value after the reconnect")
        assert seen.values == [0, 1]  # the same value again after the reconnect is not handed over


async def test_a_server_restarted_with_no_data(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    port = procs.free_port()
    first = procs.start_convex_local(tmp_path / "first.log", port=port, functions="test")
    second: Proc | None = None
    try:
        async with subscribed(session, first.url, "restart") as (sub, seen):
            await until(lambda: seen.values == [0], "the first value")
            await bump(session, first.url, "restart")
            await until(lambda: seen.values == [0, 1], "the value 1")
            first.stop()
            second = procs.start_convex_local(tmp_path / "second.log", port=port, functions="test")
            await until(lambda: seen.values == [0, 1, 0], "the empty server's value")
            assert sub.state is State.READY
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_slow_reader_gets_the_latest_value_in_order(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    """The value callback blocks the loop while 20 commits happen (in another thread): once it
    reads again, the values it gets only go up and end at the latest."""

    def bump_from_thread(times: int) -> None:
        request = urllib.request.Request(
            f"{stand_in.url}/api/mutation",
            data=json.dumps({"path": "tallies:bump", "args": {"name": "slow"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        for _ in range(times):
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200

    writers: list[asyncio.Future[None]] = []

    def slow(value: Any) -> None:
        if not writers:
            writers.append(asyncio.get_running_loop().run_in_executor(None, bump_from_thread, 20))
            time.sleep(1.0)  # the loop reads nothing meanwhile

    async with subscribed(session, stand_in.url, "slow", on_value=slow) as (sub, seen):
        await until(lambda: seen.values[-1:] == [20], "the latest value", within=20)
        await asyncio.wait_for(writers[0], WAIT)
        assert seen.values == sorted(seen.values)
        assert sub.state is State.READY


async def test_a_silent_server_trips_the_inactivity_timer_then_polling(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    async with subscribed(session, stand_in.url, "silent") as (sub, seen):
        try:
            await until(lambda: sub.state is State.READY, "ready")
            await convex.sync_fault(stand_in.url, "silence", {"silent": True})
            await until(lambda: sub.state is State.POLLING, "polling")
            await convex.sync_fault(stand_in.url, "silence", {"silent": False})
            await until(lambda: sub.state is State.READY, "ready after the silence")
            assert seen.states[:3] == [State.READY, State.CONNECTING, State.POLLING]
        finally:
            await convex.sync_fault(stand_in.url, "silence", {"silent": False})


async def test_a_message_it_does_not_understand_is_logged_once_then_polling(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    with capture_logs() as lines:
        async with subscribed(session, stand_in.url, "unknown") as (sub, seen):
            for _ in range(2):
                await until(lambda: sub.state is State.READY, "ready")
                await convex.sync_fault(
                    stand_in.url, "send", {"message": {"type": "FromTheFuture"}}
                )
                await until(lambda: sub.state is State.POLLING, "polling")
            await until(lambda: sub.state is State.READY, "ready again")
    warned = [line for line in lines if "not understood" in line["event"]]
    assert len(warned) == 1
    assert warned[0]["what"] == "a message of type FromTheFuture"
    # One line each way per change: subscribed, polling, subscribed, polling, subscribed.
    events = [line["event"] for line in lines if line["event"] != warned[0]["event"]]
    assert events == ["subscribed", "subscription unavailable: polling"] * 2 + ["subscribed"]
    assert seen.values == [0]


async def test_a_refused_upgrade_falls_back_to_polling(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    async with session.post(
        f"{stand_in.url}/_dev/faults", json={"status": 503, "paths": ["/api/sync"]}
    ) as resp:
        assert resp.status == 200
    async with subscribed(session, stand_in.url, "refused") as (sub, seen):
        try:
            await until(lambda: sub.state is State.POLLING, "polling")
            assert seen.states == [State.POLLING]
            async with session.delete(f"{stand_in.url}/_dev/faults") as resp:
                assert resp.status == 200
            await until(lambda: sub.state is State.READY, "ready once upgrades pass")
            assert seen.values == [0]
        finally:
            async with session.delete(f"{stand_in.url}/_dev/faults"):
                pass


async def test_a_failed_query_falls_back_to_polling_with_its_code(
    stand_in: Proc, session: aiohttp.ClientSession
) -> None:
    async with subscribed(
        session, stand_in.url, "guarded", path="tallies:guarded", extra={"token": "wrong"}
    ) as (sub, seen):
        await until(lambda: sub.state is State.POLLING, "polling")
        assert sub.last_error == "unauthorized"
        assert seen.values == []


async def test_nothing_listening_falls_back_to_polling(session: aiohttp.ClientSession) -> None:
    nobody = f"http://127.0.0.1:{procs.free_port()}"
    async with subscribed(session, nobody, "nobody") as (sub, seen):
        await until(lambda: sub.state is State.POLLING, "polling")
        assert seen.states == [State.POLLING]
