"""Sidecars sharing one Convex act as one fleet: a shared outage drains nobody while a local
fault takes its instance out, a shared check is probed by one instance for all, a central
drain reaches the named instance within one sync (and is audited), and `health-sidecar
fleet` lists them. Real daemons against dev/convex-local and the real Mastra, each daemon's
Mastra behind a switchable proxy of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import convex, faults, procs
from tests.support.daemon import cli as daemon_cli
from tests.support.daemon import (
    cli_async,
    get,
    log_lines,
    member_env,
    metric,
    metrics_text,
    start_daemon,
    wait_for,
)
from tests.support.procs import OPERATOR_SECRET, SECRET
from tests.support.switch import SwitchServer, switch_server

pytestmark = pytest.mark.slow

INTERVAL = 0.5
TIMEOUT = 0.3
MASTRA_DOWN = faults.respond(503, b'{"success":false}')


@pytest.fixture(scope="module")
def fleet_convex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """A Convex stand-in of this module's own: the fleet's counts are of live instances, and
    the session's shared one still counts the daemons other tests stopped without a last sync
    until their TTL."""
    with procs.convex_local(tmp_path_factory.mktemp("fleet-convex") / "out.log", SECRET) as proc:
        yield proc


@dataclass
class Member:
    """One sidecar of the fleet and the proxy in front of its Mastra."""

    name: str
    daemon: procs.Proc
    mastra: SwitchServer


def env(convex_url: str, name: str, mastra: str, **extra: str) -> dict[str, str]:
    return member_env(
        convex_url, name, mastra, interval=INTERVAL, timeout=TIMEOUT, store_interval=1, **extra
    )


@contextlib.asynccontextmanager
async def fleet_of(
    names: Sequence[str],
    fleet_convex: procs.Proc,
    mastra_local: procs.Proc,
    tmp: Path,
    **extra: str,
) -> AsyncIterator[list[Member]]:
    """Start one daemon per name (in threads: the proxies answer in this loop), ready."""
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for name in names:
            proxy = await stack.enter_async_context(switch_server(upstream=mastra_local.url))
            daemon = await asyncio.to_thread(
                start_daemon, env(fleet_convex.url, name, proxy.url, **extra), tmp / f"{name}.log"
            )
            stack.push_async_callback(asyncio.to_thread, daemon.stop)
            members.append(Member(name, daemon, proxy))
        for member in members:
            await wait_for(member.daemon.url + "/ready", 200, within=10)
        yield members


def cli(convex_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`health-sidecar ARGS` with the fleet's settings."""
    env = {
        "CONVEX_URL": convex_url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
    }
    return daemon_cli(*args, env=env)


async def readiness(members: Sequence[Member]) -> list[int]:
    return [(await get(m.daemon.url + "/ready", within=2))[0] for m in members]


async def watch_readiness(
    members: Sequence[Member], seconds: float, until: Any = None
) -> list[list[int]]:
    """/ready of every member every 50 ms for `seconds` (or until `until(statuses)`)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        statuses = await readiness(members)
        seen.append(statuses)
        if until is not None and until(statuses):
            break
        await asyncio.sleep(0.05)
    return seen


def series(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not on the page")


async def test_local_fault_leaves_shared_outage_stays(
    fleet_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Three sidecars. Mastra fails for one: only it leaves (a local fault). Mastra fails for
    all: never are all three unready, and within a few intervals all are ready again with
    `sidecar_shared_outage{check="mastra"}` 1, /health still 503, one log line saying so.
    Mastra returns: all healthy."""
    names = ["fl-a", "fl-b", "fl-c"]
    async with fleet_of(names, fleet_convex, mastra_local, tmp_path) as members:
        members[0].mastra.inject(MASTRA_DOWN)
        # Two failures, then an interval and the grace waiting for the fleet's count.
        await wait_for(members[0].daemon.url + "/ready", 503, within=10)
        await asyncio.sleep(3)  # several syncs: still a local fault
        assert await readiness(members) == [503, 200, 200]
        for member in members[1:]:
            member.mastra.inject(MASTRA_DOWN)
        seen = await watch_readiness(members, 12, until=lambda s: s == [200, 200, 200])
        assert seen[-1] == [200, 200, 200], seen[-5:]
        # Ready at once may still be the wait for Convex's count: until all have counted.
        deadline = time.monotonic() + 5
        while True:
            pages = [await metrics_text(m.daemon.url) for m in members]
            shared = [series(p, 'sidecar_shared_outage{check="mastra"}') for p in pages]
            if shared == [1, 1, 1] or time.monotonic() > deadline:
                break
            seen += await watch_readiness(members, 0.2)
        health = [await get(m.daemon.url + "/health") for m in members]
        _, details = await get(members[1].daemon.url + "/health?verbose")
        for member in members:
            member.mastra.clear()
        await asyncio.sleep(2 * INTERVAL + TIMEOUT + 1)
        after = [await get(m.daemon.url + "/health") for m in members]
        pages_after = [await metrics_text(m.daemon.url) for m in members]
    assert all(statuses != [503, 503, 503] for statuses in seen)
    assert all(status == 503 and body["services"]["mastra"] == "error" for status, body in health)
    assert shared == [1, 1, 1], shared
    assert details["fleet"]["shared_outages"]["mastra"].startswith("shared outage: mastra failing")
    assert all(status == 200 and body["status"] == "ok" for status, body in after)
    assert all(series(p, 'sidecar_shared_outage{check="mastra"}') == 0 for p in pages_after)
    for member in members:
        lines = [line["message"] for line in log_lines(member.daemon)]
        assert sum(m.startswith("shared outage: mastra") for m in lines) == 1, lines
        assert lines.count("shared outage over: mastra") == 1, lines


async def test_without_convex_there_is_no_fleet_view(
    mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Convex cannot be reached (its check made non-critical here, so that only Mastra
    decides): the instance is ready, then a failing panic check is a local fault (no count
    can say it is shared) and it leaves the pool as it would without a fleet."""
    store = faults.refused_url()
    convex_check = {"name": "convex", "kind": "convex", "target": store, "critical": False}
    async with switch_server(upstream=mastra_local.url) as proxy:
        daemon = await asyncio.to_thread(
            start_daemon,
            env(
                store,
                "fl-alone",
                proxy.url,
                SIDECAR_CONVEX_ALLOW_HTTP="1",
                SIDECAR_CHECKS=json.dumps([convex_check]),
            ),
            tmp_path / "alone.log",
        )
        try:
            await wait_for(daemon.url + "/ready", 200, within=5)
            proxy.inject(MASTRA_DOWN)
            took = await wait_for(daemon.url + "/ready", 503, within=5)
            _, body = await get(daemon.url + "/ready")
        finally:
            await asyncio.to_thread(daemon.stop)
    assert "mastra is fail" in body["reasons"]
    assert took < 2 * INTERVAL + TIMEOUT + 1.5


async def test_a_fleet_of_one_never_waits(mastra_local: procs.Proc, tmp_path: Path) -> None:
    """One sidecar alone in its Convex deployment, 1 s checks, its Mastra stopped: /ready
    turns 503 within about one sync of /health saying `mastra: error` (the answer counts one
    live instance: no other could share the failure), not one interval plus the grace later
    (today 4.2 s: /ready stayed 200 until 5.2 s); the reason is the check, nothing awaits a
    count."""
    with procs.convex_local(tmp_path / "convex.log", SECRET) as alone:
        async with switch_server(upstream=mastra_local.url) as proxy:
            settings = env(alone.url, "fo-alone", proxy.url, SIDECAR_INTERVAL="1")
            del settings["SIDECAR_STORE_INTERVAL"]  # the default: one sync a minute
            daemon = await asyncio.to_thread(start_daemon, settings, tmp_path / "alone.log")
            try:
                await wait_for(daemon.url + "/ready", 200, within=10)
                await proxy.refuse()
                error_at = ready_503_at = None
                deadline = time.monotonic() + 15
                while ready_503_at is None and time.monotonic() < deadline:
                    _, health = await get(daemon.url + "/health")
                    now = time.monotonic()
                    if error_at is None and health["services"]["mastra"] == "error":
                        error_at = now
                    if (await get(daemon.url + "/ready"))[0] == 503:
                        ready_503_at = now
                    await asyncio.sleep(0.05)
                _, details = await get(daemon.url + "/health?verbose")
                _, ready = await get(daemon.url + "/ready")
            finally:
                await asyncio.to_thread(daemon.stop)
    assert error_at is not None, "/health never said mastra: error"
    assert ready_503_at is not None, "/ready never answered 503"
    print(f"fleet of one: /ready 503 {ready_503_at - error_at:.2f}s after /health said error")
    assert ready_503_at - error_at < 2.5, ready_503_at - error_at
    assert ready == {"ready": False, "reasons": ["mastra is fail"]}
    assert details["fleet"]["awaiting_count"] == []


async def test_drain_undrain_and_fleet_commands(
    fleet_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """`health-sidecar drain --instance fd-b` takes fd-b out within one sync (/ready 503
    `drained: ...`, /health still 200), `fleet` shows it draining and exits 1, `undrain`
    brings it back, every step is in the audit table; an unknown name changes nothing."""
    async with fleet_of(["fd-a", "fd-b"], fleet_convex, mastra_local, tmp_path) as members:
        await asyncio.sleep(1.5)  # the sync after turning ready has told Convex so
        listed = cli(fleet_convex.url, "fleet", "--json")
        # In a thread: the CLI waits for fd-b's acknowledgement while the proxies (in this
        # loop) keep answering the daemons' probes.
        drained = await asyncio.to_thread(
            cli, fleet_convex.url, "drain", "--instance", "fd-b", "--reason", "kernel upgrade"
        )
        took = await wait_for(members[1].daemon.url + "/ready", 503, within=5)
        _, ready = await get(members[1].daemon.url + "/ready")
        health = await get(members[1].daemon.url + "/health")
        others = await readiness(members[:1])
        await asyncio.sleep(1.5)  # the sync after turning unready has told Convex so
        table = cli(fleet_convex.url, "fleet")
        unknown = cli(fleet_convex.url, "drain", "--instance", "fd-nobody", "--reason", "x")
        undrained = await asyncio.to_thread(cli, fleet_convex.url, "undrain", "--instance", "fd-b")
        back = await wait_for(members[1].daemon.url + "/ready", 200, within=5)
        drain_all = [
            *("drain", "--all", "--yes", "--reason", "maintenance", "--for", "1m"),
            *("--timeout", "5s", "--no-wait"),
        ]
        assert cli(fleet_convex.url, *drain_all).returncode == 0
        for member in members:
            await wait_for(member.daemon.url + "/ready", 503, within=5)
        all_drained = await readiness(members)
        undrain_all = ("undrain", "--all", "--yes", "--timeout", "3s")
        assert (await asyncio.to_thread(cli, fleet_convex.url, *undrain_all)).returncode == 0
        for member in members:
            await wait_for(member.daemon.url + "/ready", 200, within=5)
        all_back = await readiness(members)
        audit = await convex.documents(fleet_convex.url, "sidecarDrainLog")
    doc = json.loads(listed.stdout)
    mine = {m["instance"]: m for m in doc["instances"] if m["instance"].startswith("fd-")}
    assert listed.returncode == 0 or not doc["ready"], listed  # other tests' instances
    assert sorted(mine) == ["fd-a", "fd-b"]
    assert all(m["ready"] for m in mine.values())
    assert drained.returncode == 0, drained.stderr
    assert took <= 1 + 1.5, took  # within one sync (store interval 1 s) and its call
    assert ready == {"ready": False, "reasons": ["drained: kernel upgrade"]}
    assert health[0] == 200, health
    assert others == [200]
    assert table.returncode == 1
    assert "yes: kernel upgrade (by " in table.stdout
    assert "(claimed), signed with the operator key" in table.stdout
    assert all(m["draining"] is None for m in mine.values())
    assert all_drained == [503, 503], all_drained
    assert all_back == [200, 200], all_back
    assert unknown.returncode == 2, unknown
    assert "unknown instance: fd-nobody" in unknown.stderr
    assert undrained.returncode == 0, undrained.stderr
    assert back <= 1 + 1.5
    rows = [(r["instance"], r["action"], r["reason"]) for r in audit if r["instance"] == "fd-b"]
    assert rows == [
        ("fd-b", "drain", "kernel upgrade"),
        ("fd-b", "undrain", None),
        ("fd-b", "drain", "maintenance"),
        ("fd-b", "undrain", None),
    ]
    assert all("@" in r["by"] for r in audit)


DRAIN_SERIES = (
    "sidecar_draining",
    'sidecar_draining_source{source="signal"}',
    'sidecar_draining_source{source="central"}',
    "sidecar_ready",
)


async def drain_metrics(url: str) -> tuple[tuple[float, ...], float, float]:
    """The drain series of DRAIN_SERIES, and the central drain's start and end."""
    page = await metrics_text(url)
    return (
        tuple(metric(page, name) for name in DRAIN_SERIES),
        metric(page, "sidecar_drain_started_timestamp_seconds"),
        metric(page, "sidecar_drain_until_timestamp_seconds"),
    )


async def test_a_central_drain_shows_as_a_drain(
    fleet_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """`health-sidecar drain` through dev/convex-local: the daemon's sidecar_draining is 1
    with the source `central` (so SidecarNotReady stays silent), the drain's start and end are
    on /metrics, ?verbose says draining, the reason and who claimed it; several syncs later
    it logged the drain once; undrained, every drain series is 0 again."""
    async with fleet_of(["fm-a"], fleet_convex, mastra_local, tmp_path) as members:
        url = members[0].daemon.url
        before = await drain_metrics(url)
        asked = time.time()
        drained = cli(
            fleet_convex.url, "drain", "--instance", "fm-a", "--reason", "disk swap", "--for", "1h"
        )
        answered = time.time()
        await wait_for(url + "/ready", 503, within=5)
        during = await drain_metrics(url)
        _, details = await get(url + "/health?verbose")
        await asyncio.sleep(3)  # three more syncs answer the same drain
        undrained = cli(fleet_convex.url, "undrain", "--instance", "fm-a")
        await wait_for(url + "/ready", 200, within=5)
        after = await drain_metrics(url)
        _, details_after = await get(url + "/health?verbose")
        messages = [line["message"] for line in log_lines(members[0].daemon)]
    assert drained.returncode == 0, drained.stderr
    assert undrained.returncode == 0, undrained.stderr
    assert before == ((0.0, 0.0, 0.0, 1.0), 0.0, 0.0)
    series, started, until = during
    assert series == (1.0, 0.0, 1.0, 0.0), during
    assert asked - 1 <= started <= answered + 1, (asked, started, answered)
    assert asked + 3600 - 2 <= until <= answered + 3600 + 2, (asked, until, answered)
    assert details["ready"] is False
    assert details["draining"] is True
    drain = details["drain"]
    assert drain["sources"] == ["central"]
    assert drain["central"]["reason"] == "disk swap"
    assert "@" in drain["central"]["claimed_by"]  # the CLI's user@host
    assert drain["central"]["since"].endswith("Z")
    assert drain["central"]["until"].endswith("Z")
    assert messages.count("drained: disk swap") == 1, messages
    assert messages.count("drain over") == 1, messages
    assert after == before
    assert (details_after["draining"], details_after["drain"]) == (False, None)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["drain", "--instance", "x", "--reason", "r", "--for", "soon"], "--for"),
        (["drain", "--instance", "x", "--reason", "r", "--for", "0s"], "--for"),
        (["drain", "--instance", "fd-a", "--reason", "r", "--for", "90"], "--for"),
        (["drain", "--instance", "fd-a", "--reason", "r", "--for", "31d"], "--for"),
        (["drain", "--instance", "fd-a", "--reason", "r", "--timeout", "soon"], "--timeout"),
        (["drain", "--instance", "fd-a", "--reason", "r", "--timeout", "10"], "--timeout"),
        (["undrain", "--instance", "fd-a", "--timeout", "0s"], "--timeout"),
        (["drain", "--instance", "fd-a", "--all", "--reason", "r"], "--all"),
        (["drain", "--instance", "x"], "--reason"),
        (["drain", "--all", "--reason", "r"], "--yes"),
        (["undrain"], "--instance"),
        (["undrain", "--instance", "x", "--reason", "r"], "--reason"),
    ],
)
async def test_drain_bad_input_is_refused_naming_the_option(
    fleet_convex: procs.Proc, args: list[str], error: str
) -> None:
    """A bad duration (no unit, over 30 days), a --timeout that does not parse, a drain
    without a reason, --all without --yes or with --instance: exit 2 naming the option, before
    anything reaches Convex (its audit trail has no new row)."""
    before = await convex.documents(fleet_convex.url, "sidecarDrainLog")
    proc = await asyncio.to_thread(cli, fleet_convex.url, *args)
    assert proc.returncode == 2, proc
    assert error in proc.stderr
    assert "Traceback" not in proc.stderr
    assert await convex.documents(fleet_convex.url, "sidecarDrainLog") == before


@pytest.mark.parametrize("args", [["fleet"], ["drain", "--instance", "x", "--reason", "r"]])
def test_without_the_operator_key_the_cli_says_so_and_exits_2(
    fleet_convex: procs.Proc, args: list[str]
) -> None:
    """fleet, drain and undrain are signed with HEALTH_SIDECAR_OPERATOR_SECRET: without it in
    the environment the CLI names it and exits 2, and nothing reaches Convex; the fleet key
    alone is not enough."""
    env = {"CONVEX_URL": fleet_convex.url, "HEALTH_SIDECAR_SECRET": SECRET}
    proc = daemon_cli(*args, env=env)
    assert proc.returncode == 2, proc
    assert "HEALTH_SIDECAR_OPERATOR_SECRET is not set" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


CLOCK_SKEW = json.dumps(
    {
        "status": "error",
        "errorMessage": "[Request ID: 0123456789abcdef] Server Error",
        "errorData": {
            "code": "clock_skew",
            "message": "timestamp 95 s from the deployment's clock (at most 30 s): "
            "check the sidecar's clock",
        },
    }
).encode()


@pytest.mark.parametrize("args", [["fleet"], ["undrain", "--instance", "x"]])
async def test_a_clock_skew_is_exit_3_not_not_ready(args: list[str]) -> None:
    """A deployment that refuses the call's timestamp (as Convex answers it: a ConvexError
    with code clock_skew; a fault server, since this host's clock cannot be moved): the CLI
    says so and exits 3, not 1 ("not ready")."""
    async with faults.fault_server(faults.respond(200, CLOCK_SKEW)) as deployment:
        env = {
            "CONVEX_URL": deployment.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
        }
        proc = await cli_async(*args, env=env)
    assert proc.returncode == 3, proc
    assert "clock_skew: timestamp 95 s from the deployment's clock" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_shared_check_is_probed_by_one_instance_for_all(
    fleet_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Five sidecars with one shared http check: the target sees about one probe per
    interval (not five), exactly one instance is the holder, all five serve its result; the
    holder killed, another takes over within the lease and the probes go on."""
    async with faults.fault_server(faults.respond(200, b'{"ok":true}')) as target:
        check = {
            "name": "agent",
            "kind": "http",
            "target": target.url,
            "interval": 1,
            "timeout": TIMEOUT,
            "shared": True,
            "jitter": 0,
        }
        extra = {"SIDECAR_CHECKS": json.dumps([check])}
        names = ["fs-a", "fs-b", "fs-c", "fs-d", "fs-e"]
        async with fleet_of(names, fleet_convex, mastra_local, tmp_path, **extra) as members:
            await asyncio.sleep(3)  # the first round (every instance probes once) is over
            start, count0 = time.monotonic(), target.requests
            await asyncio.sleep(6)
            rate = (target.requests - count0) / (time.monotonic() - start)
            holders = [
                series(await metrics_text(m.daemon.url), 'sidecar_check_holder{check="agent"}')
                for m in members
            ]
            statuses = [
                (await get(m.daemon.url + "/health?verbose"))[1]["checks"]["agent"]["status"]
                for m in members
            ]
            holder = members[holders.index(1.0)]
            holder.daemon.popen.kill()
            holder.daemon.popen.wait(5)
            rest = [m for m in members if m is not holder]
            await asyncio.sleep(2 * 1 + 3.2 + 1)  # one lease, and a round
            count1, start = target.requests, time.monotonic()
            await asyncio.sleep(4)
            rate_after = (target.requests - count1) / (time.monotonic() - start)
            new_holders = [
                series(await metrics_text(m.daemon.url), 'sidecar_check_holder{check="agent"}')
                for m in rest
            ]
            after = [
                (await get(m.daemon.url + "/health?verbose"))[1]["checks"]["agent"]["status"]
                for m in rest
            ]
    print(
        f"shared check, 5 sidecars, 1 s interval: {rate:.2f} probes/s; after the holder died:"
        f" {rate_after:.2f} probes/s"
    )
    assert sorted(holders) == [0.0] * 4 + [1.0]
    assert statuses == ["pass"] * 5
    assert 0.6 <= rate <= 1.6, rate  # about one probe a second for the fleet, not five
    assert sorted(new_holders) == [0.0] * 3 + [1.0]
    assert 0.6 <= rate_after <= 1.6, rate_after
    assert after == ["pass"] * 4
