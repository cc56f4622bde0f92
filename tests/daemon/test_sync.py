"""The store sync's pace against dev/convex-local, counted by the stand-in (calls, documents
written): one call per store period in steady state, writing the instance's liveness only;
a status change in Convex within about a second; never more than one call a second."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.store import ConvexClient, HealthStore
from sidecar.store.messages import SyncRequest
from tests.support import convex, faults, procs
from tests.support.daemon import get, running_daemon_async, wait_for
from tests.support.procs import SECRET

OK = faults.respond(200, b'{"ok":true}')
DOWN = faults.respond(500, b'{"ok":false}')


@pytest.fixture
async def app() -> AsyncIterator[faults.FaultServer]:
    async with faults.fault_server(OK) as server:
        yield server


def env(
    convex_local: procs.Proc, app: faults.FaultServer, instance: str, **extra: str
) -> dict[str, str]:
    checks = [
        {"name": "app", "kind": "http", "target": app.url, "interval": 0.2, "timeout": 0.15},
    ]
    return {
        "CONVEX_URL": convex_local.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": "0.5",
        "SIDECAR_TIMEOUT": "0.4",
        "SIDECAR_DRAIN_SECONDS": "0",
        "SIDECAR_CHECKS": json.dumps(checks),
        **extra,
    }


async def sync_calls(url: str) -> float:
    return (await convex.stats(url)).get("health:sync", {}).get("calls", 0.0)


async def test_steady_state_is_one_small_write_per_store_period(
    app: faults.FaultServer, tmp_path: Path
) -> None:
    """Checks every 0.2-0.5 s, nothing changing, SIDECAR_STORE_INTERVAL=2: over 6 s, three
    calls (not one per round), each writing one document (the instance's liveness; no
    result is rewritten while it stays the same). A stand-in of its own: in the session's,
    a sync may also take out another test's dead instance (what every sync does, once)."""
    with procs.convex_local(tmp_path / "convex.log") as convex_local:
        await steady_state(convex_local, app, tmp_path)


async def steady_state(convex_local: procs.Proc, app: faults.FaultServer, tmp_path: Path) -> None:
    async with running_daemon_async(
        env(convex_local, app, "sync-steady", SIDECAR_STORE_INTERVAL="2"),
        tmp_path / "daemon.log",
    ) as daemon:
        await wait_for(daemon.url + "/ready", 200, within=5)
        await asyncio.sleep(1.5)  # the first round's syncs are done
        await convex.reset_stats(convex_local.url)
        await asyncio.sleep(6.2)
        counted = (await convex.stats(convex_local.url))["health:sync"]
    assert 3 <= counted["calls"] <= 4, counted
    assert counted["documentsWritten"] == counted["calls"], counted
    assert counted["errors"] == 0, counted
    # Read: the heartbeat (by id, and again by its patch) and the live count. An instance
    # alone does not read the peers' ring on every sync (it did, asking for peers in vain);
    # at most once in the run should its hourly refresh fall here.
    assert counted["documentsRead"] <= 3 * counted["calls"] + 1, counted
    # The budget (DESIGN.md): 30 MB a month at one sync a minute (43,200 in 30 days).
    per_sync = (counted["bytesRead"] + counted["bytesWritten"]) / counted["calls"]
    assert per_sync <= 30e6 / 43_200, counted


async def test_a_status_change_reaches_convex_within_a_second(
    convex_local: procs.Proc, app: faults.FaultServer, tmp_path: Path
) -> None:
    """With the default store period (60 s), the app failing is in Convex about a second
    after the daemon serves it, and so is its recovery."""
    async with running_daemon_async(
        env(convex_local, app, "sync-change"), tmp_path / "daemon.log"
    ) as daemon:
        await wait_for(daemon.url + "/ready", 200, within=5)
        lags = []
        for behaviour, status in ((DOWN, "fail"), (OK, "pass")):
            app.behaviour = behaviour
            await wait_for(daemon.url + "/ready", 200 if status == "pass" else 503, within=5)
            served = time.monotonic()
            stored: list[object] = []
            while stored != [status]:
                assert time.monotonic() - served < 5, stored
                await asyncio.sleep(0.02)
                rows = await convex.instance_results(convex_local.url, "sync-change")
                stored = [row["status"] for row in rows if row["check"] == "app"]
            lags.append(time.monotonic() - served)
    assert max(lags) <= 1.5, lags


async def test_a_flapping_check_costs_at_most_one_call_a_second(
    convex_local: procs.Proc, app: faults.FaultServer, tmp_path: Path
) -> None:
    """The app flips between 200 and 500 on every probe (five status changes a second):
    the sync coalesces them, at most one call a second."""
    flapping = [OK, DOWN]

    async def flip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flapping.reverse()
        await flapping[0](reader, writer)

    checks = [
        {
            "name": "app",
            "kind": "http",
            "target": app.url,
            "interval": 0.2,
            "timeout": 0.15,
            "jitter": 0,
            "failures_before_fail": 1,
            "critical": False,
        },
    ]
    async with running_daemon_async(
        {**env(convex_local, app, "sync-flap"), "SIDECAR_CHECKS": json.dumps(checks)},
        tmp_path / "daemon.log",
    ) as daemon:
        await wait_for(daemon.url + "/ready", 200, within=5)
        await convex.reset_stats(convex_local.url)
        app.behaviour = flip
        started = time.monotonic()
        await asyncio.sleep(5)
        calls = await sync_calls(convex_local.url)
        elapsed = time.monotonic() - started
        _, details = await get(daemon.url + "/health?verbose")
    assert app.requests >= 20  # it really flapped
    assert calls <= elapsed + 1, (calls, elapsed)
    assert calls >= 3, calls  # and the changes did reach Convex
    assert details["store"]["status"] == "ok", details["store"]


async def test_a_refused_token_makes_the_daemon_say_hello_again(
    convex_local: procs.Proc, app: faults.FaultServer, tmp_path: Path
) -> None:
    """Another process says hello under the daemon's name (the name taken over: a new token):
    the daemon's next sync is refused `unauthorized`, its following one is a hello that gets
    its own token back, and its syncs are accepted again (its store status back to ok)."""
    async with running_daemon_async(
        env(convex_local, app, "sync-token", SIDECAR_STORE_INTERVAL="1"),
        tmp_path / "daemon.log",
    ) as daemon:
        await wait_for(daemon.url + "/ready", 200, within=5)
        await asyncio.sleep(1.5)
        async with aiohttp.ClientSession() as session:
            client = ConvexClient(session, url=convex_local.url, timeout=2.0)
            usurper = HealthStore(
                client, secret=SECRET, instance="sync-token", version="9.9.9", ttl_seconds=60
            )
            taken = (await usurper.sync(SyncRequest(hello={}))).token
        await convex.reset_stats(convex_local.url)
        refused = accepted = 0.0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not (refused and accepted >= 2):
            await asyncio.sleep(0.2)
            counted = (await convex.stats(convex_local.url)).get("health:sync", {})
            refused = counted.get("errors", 0.0)
            accepted = counted.get("calls", 0.0) - refused
        mailbox = [
            m
            for m in await convex.documents(convex_local.url, "sidecarMailbox")
            if m["instance"] == "sync-token"
        ]
        _, details = await get(daemon.url + "/health?verbose")
    assert refused >= 1, (refused, accepted)
    assert accepted >= 2, (refused, accepted)
    assert taken is not None
    assert (
        mailbox[0]["tokenHash"] != hashlib.sha256(f"sync-token\n{taken}".encode()).hexdigest()[:16]
    )
    assert details["store"]["status"] == "ok", details["store"]
