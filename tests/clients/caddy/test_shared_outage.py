"""Five app containers behind the real Caddy, one fleet: a shared Mastra outage drains nobody.

app-1 .. app-5 on 127.0.0.2 .. 127.0.0.6, each with its own sidecar on the same address; all
five sidecars share one dev/convex-local, and each reaches the real Mastra through a proxy of
its own that the test can make answer 503. The sidecars probe every 0.5 s (timeout 0.3 s,
default thresholds: 2 failures before a check fails) and sync with Convex every second; Caddy
asks every sidecar's /ready every 250 ms, as config/Caddyfile does in production every 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import faults, procs
from tests.support.caddyfleet import (
    Container,
    Fleet,
    Hit,
    Sample,
    live_instances,
    reverse_proxy,
    running_fleet,
    sample_readiness,
    steady_traffic,
)
from tests.support.daemon import get, metric, metrics_text, wait_for
from tests.support.switch import SwitchServer, switch_server

pytestmark = [pytest.mark.serial, pytest.mark.slow]

SIZE = 5
INTERVAL = 0.5  # SIDECAR_INTERVAL: every check of the seed, Mastra's included
SETTINGS = {
    "SIDECAR_INTERVAL": str(INTERVAL),
    "SIDECAR_TIMEOUT": "0.3",
    "SIDECAR_STORE_INTERVAL": "1",
}
MASTRA_DOWN = faults.respond(503, b'{"success":false}')
SHARED = 'sidecar_shared_outage{check="mastra"}'
RATE = 30  # client requests per second through Caddy, for the whole scenario
MOST_SECONDS = 90  # bounds every background loop (the test itself takes about 30 s)


@dataclass
class Five:
    """The fleet behind Caddy and the Mastra proxy of each container, in the same order."""

    fleet: Fleet
    mastra: list[SwitchServer]

    @property
    def containers(self) -> list[Container]:
        return self.fleet.containers


@pytest.fixture
async def five(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> AsyncIterator[Five]:
    async with contextlib.AsyncExitStack() as stack:
        proxies = [
            await stack.enter_async_context(switch_server(upstream=mastra_local.url))
            for _ in range(SIZE)
        ]
        fleet = await stack.enter_async_context(
            running_fleet(
                tmp_path / "fleet",
                convex_local.url,
                [proxy.url for proxy in proxies],
                drain=1.0,
                settings=SETTINGS,
            )
        )
        yield Five(fleet, proxies)


async def shared_outage_flags(containers: Sequence[Container]) -> list[float]:
    """sidecar_shared_outage{check="mastra"} of every sidecar."""
    return [metric(await metrics_text(c.sidecar.url), SHARED) for c in containers]


async def wait_flags(containers: Sequence[Container], value: float, *, within: float) -> float:
    """Poll every sidecar's shared-outage gauge until all read `value`; how long it took."""
    started = time.monotonic()
    flags: list[float] = []
    while time.monotonic() - started < within:
        flags = await shared_outage_flags(containers)
        if flags == [value] * len(containers):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{SHARED} stayed {flags}, not all {value}")


def between(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s.at < end]


def longest_out(samples: Sequence[Sample], index: int) -> float:
    """The longest stretch the sidecar at `index` was seen unready (first to last sample of a
    run of unready samples, plus one sampling period); 0 when never."""
    longest, start, last = 0.0, None, None
    for sample in samples:
        if sample.statuses[index] != 200:
            start = sample.at if start is None else start
            last = sample.at
            continue
        if start is not None and last is not None:
            longest = max(longest, sample.at - start)
        start = last = None
    if start is not None and last is not None:
        longest = max(longest, last - start + 0.05)
    return longest


def served(hits: Sequence[Hit], name: str, start: float, end: float) -> list[float]:
    """When the requests sent in [start, end) that `name` answered were sent."""
    return [h.sent for h in hits if h.body == name and start <= h.sent < end]


async def test_shared_mastra_outage_drains_nobody(five: Five, convex_local: procs.Proc) -> None:
    """(a) All five healthy: Caddy spreads requests over all five. (b) app-1's sidecar loses
    Mastra: only it leaves (/ready 503, Caddy stops routing to it), the other four stay ready
    throughout. (c) Mastra fails for all five: at no moment (every sidecar's /ready asked
    every 50 ms) are all five unready; within a few intervals all five are ready again, each
    with sidecar_shared_outage{check="mastra"} 1 and /health 503 naming mastra `error`, and
    they stay ready. (d) Mastra returns: all healthy, the gauge 0, Caddy routes to all five.
    A client sending 30 requests a second through Caddy for the whole scenario sees none
    fail (the apps never needed Mastra). Prints the measured figures."""
    fleet, containers, mastra = five.fleet, five.containers, five.mastra
    names = {c.name for c in containers}
    first, rest = containers[0], containers[1:]

    # The topology: Caddy's running configuration has the five apps as its upstreams and
    # asks the sidecar beside each (same address, SIDECAR_PORT) for /ready, as the shipped
    # Caddyfile does; every address answers with its own sidecar (bound there, not on *).
    _, config = await get(fleet.admin + "/config/")
    proxy = reverse_proxy(config)
    assert [u["dial"] for u in proxy["upstreams"]] == [c.upstream for c in containers]
    assert [c.host for c in containers] == [f"127.0.0.{n}" for n in range(2, 2 + SIZE)]
    active = proxy["health_checks"]["active"]
    sidecar_ports = {int(c.sidecar.url.rpartition(":")[2]) for c in containers}
    assert (active["uri"], active["expect_status"]) == ("/ready", 200)
    assert sidecar_ports == {active["port"]}
    for container in containers:
        _, details = await get(container.sidecar.url + "/health?verbose")
        assert details["instance"] == container.instance
        assert container.sidecar.url.startswith(f"http://{container.host}:")
    # The fleet Convex counts: ours, and at most as many others (stopped elsewhere without
    # their last sync, alive until their TTL): else five failing could not be the threshold.
    ours = {c.instance for c in containers}
    live = await live_instances(convex_local.url)
    others = sorted(set(live) - ours)
    assert ours <= set(live), live
    assert len(others) <= SIZE, f"other live instances would outvote the fleet: {others}"

    stop = asyncio.Event()
    traffic = asyncio.create_task(
        steady_traffic(fleet.url, stop, rate=RATE, max_requests=RATE * MOST_SECONDS)
    )
    sampler = asyncio.create_task(sample_readiness(containers, stop, most=20 * MOST_SECONDS))
    try:
        # (a) All healthy: Caddy spreads the requests over all five.
        await fleet.wait_served_by(names, within=15, batch=40)
        assert await shared_outage_flags(containers) == [0.0] * SIZE

        # (b) One sidecar loses Mastra: a local fault, only it leaves.
        t_b = time.monotonic()
        mastra[0].inject(MASTRA_DOWN)
        to_503 = await wait_for(first.sidecar.url + "/ready", 503, within=10)
        t_503 = t_b + to_503
        _, ready_body = await get(first.sidecar.url + "/ready")
        await fleet.wait_served_by(names - {first.name}, within=10, batch=40)
        await asyncio.sleep(2.0)  # several more syncs: still a local fault
        local_flags = await shared_outage_flags(containers)
        health_b = [await get(c.sidecar.url + "/health") for c in containers]

        # (c) Mastra fails for all five: a shared outage.
        t_c = time.monotonic()
        for proxy_ in mastra[1:]:
            proxy_.inject(MASTRA_DOWN)
        to_all_ready = await wait_all_ready(containers, since=t_c, within=20)
        t_all_ready = t_c + to_all_ready
        to_flags = await wait_flags(containers, 1.0, within=10)
        await asyncio.sleep(2.0)  # they stay ready while the outage lasts
        health_c = [await get(c.sidecar.url + "/health") for c in containers]
        _, details_c = await get(rest[0].sidecar.url + "/health?verbose")
        await fleet.wait_served_by(names, within=10, batch=40)

        # (d) Mastra returns: all healthy.
        t_d = time.monotonic()
        for proxy_ in mastra:
            proxy_.clear()
        for container in containers:
            await wait_health_ok(container, within=10)
        to_healthy = time.monotonic() - t_d
        await wait_flags(containers, 0.0, within=10)
        await fleet.wait_served_by(names, within=10, batch=40)
        t_end = time.monotonic()
    finally:
        stop.set()
        hits = await traffic
        samples = await sampler

    # The figures first, so that a failing run prints them too.
    during_b = between(samples, t_b, t_c)
    during_c = between(samples, t_c, t_d)
    during_d = between(samples, t_d, t_end)
    late = max((t - t_503 for t in served(hits, first.name, t_503, t_c)), default=0.0)
    most_unready = max(s.unready for s in during_c)
    peak = next(s.statuses for s in during_c if s.unready == most_unready)
    out_c = max(longest_out(during_c, index) for index in range(1, SIZE))
    most_unready_d = max(s.unready for s in during_d)
    failed = [h for h in hits if not h.ok]
    outage = details_c["fleet"]["shared_outages"].get("mastra", "")
    print(
        f"\nshared outage, {SIZE} sidecars behind Caddy (check interval {INTERVAL}s, sync 1s, "
        f"Caddy health_interval {fleet.caddy_interval}s; {len(live)} live in Convex, "
        f"{len(others)} not ours): (b) local fault: /ready 503 after {to_503:.2f}s, last "
        f"request Caddy routed to it sent {late:.2f}s after that, the other four never "
        f"unready in {len(during_b)} samples; (c) all failing: most unready at once "
        f"{most_unready} of {SIZE} {peak} ({len(during_c)} samples every ~50 ms; none of "
        f"the four that failed last out longer than {out_c:.2f}s), all ready "
        f"{to_all_ready:.2f}s after Mastra failed for all, shared_outage 1 on all "
        f"{to_flags:.2f}s after that, {outage!r}; (d) all healthy {to_healthy:.2f}s after "
        f"Mastra returned, most unready at once {most_unready_d}; client: {len(hits)} "
        f"requests at {RATE}/s through Caddy, {len(failed)} failed"
    )

    # (a)
    assert all(s.unready == 0 for s in between(samples, 0, t_b)), "not all ready at first"
    # (b) Only app-1's sidecar left, for good; the other four never wavered; Caddy took it
    # out within a few of its health checks (250 ms) and kept routing to the other four.
    assert ready_body == {"ready": False, "reasons": ["mastra is fail"]}
    assert all(s.statuses[1:] == (200,) * (SIZE - 1) for s in during_b), [
        s.statuses for s in during_b if s.statuses[1:] != (200,) * (SIZE - 1)
    ]
    assert all(s.statuses[0] == 503 for s in between(samples, t_503 + 0.1, t_c))
    assert local_flags == [0.0] * SIZE  # one failing instance is never a shared outage
    assert [status for status, _ in health_b] == [503] + [200] * (SIZE - 1)
    assert late < 2.0, f"Caddy routed to app-1 {late:.2f}s after its /ready turned 503"
    assert all(served(hits, c.name, t_b, t_c) for c in rest), "the others must keep serving"
    # (c) Never all five out; back within a few intervals, and staying so; a shared outage
    # on each, while /health still says Mastra is down.
    assert most_unready < SIZE, [s.statuses for s in during_c if s.unready == SIZE]
    assert to_all_ready < 12 * INTERVAL, f"all five ready only {to_all_ready:.2f}s after"
    unready_after = [s for s in between(samples, t_all_ready + to_flags, t_d) if s.unready]
    assert unready_after == [], [s.statuses for s in unready_after]
    for status, body in health_c:
        assert status == 503
        assert body["status"] == "error"
        assert body["services"]["mastra"] == "error"
    assert outage.startswith("shared outage: mastra failing on"), outage
    # (d) All back; and all along, no request through Caddy failed.
    assert most_unready_d < SIZE
    assert len(hits) >= RATE * (t_end - t_b) * 0.8, f"only {len(hits)} requests were sent"
    assert failed == [], f"{len(failed)} of {len(hits)} requests failed: {failed[:5]}"
    assert {h.body for h in hits if h.sent >= t_c} == names


async def wait_all_ready(containers: Sequence[Container], *, since: float, within: float) -> float:
    """Poll until every sidecar's /ready answers 200 at once; how long after `since`."""
    deadline = since + within
    statuses: list[int] = []
    while time.monotonic() < deadline:
        statuses = [(await get(c.sidecar.url + "/ready", within=2))[0] for c in containers]
        if statuses == [200] * len(containers):
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    raise AssertionError(f"not all ready within {within}s: {statuses}")


async def wait_health_ok(container: Container, *, within: float) -> None:
    """Poll a sidecar's /health until it answers 200 with every service ok."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await get(container.sidecar.url + "/health", within=2)
        if last[0] == 200 and last[1]["status"] == "ok":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{container.name}'s sidecar not healthy within {within}s: {last}")
