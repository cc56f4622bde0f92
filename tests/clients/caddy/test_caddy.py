"""The real Caddy in front of two app containers, each with its own real sidecar.

Caddy runs config/Caddyfile itself (placeholders set to loopback addresses and free ports,
health_interval 250ms); every sidecar carries a critical `app` check of the app beside it
(every 250ms, default thresholds) plus the seed's Convex and Mastra checks against
dev/convex-local and the real Mastra server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.config import Settings
from tests.support import procs
from tests.support.caddyfleet import (
    CADDYFILE,
    Fleet,
    adapt,
    caddy,
    caddy_env,
    reverse_proxy,
    running_fleet,
    sigterm,
    steady_traffic,
    until,
)
from tests.support.daemon import wait_for

pytestmark = [pytest.mark.serial, pytest.mark.slow]

NS = 1e9  # Caddy's JSON durations are nanoseconds


@pytest.fixture
async def fleet(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> AsyncIterator[Fleet]:
    mastra = [mastra_local.url] * 2  # two containers, both on the real Mastra
    async with running_fleet(tmp_path / "fleet", convex_local.url, mastra) as running:
        yield running


def test_shipped_caddyfile_is_valid_and_fits_the_drain(tmp_path: Path) -> None:
    """config/Caddyfile as shipped (no placeholder set): `caddy validate` accepts it without
    resolving app-1/app-2, `caddy fmt` leaves it as it is, and its active health check asks
    every upstream's sidecar (port 8099, the daemon's default) for /ready, expecting 200,
    often enough that Caddy takes a draining container out well within the sidecar's
    default drain period, even with 2.8+'s `health_fails 2`."""
    env = caddy_env(tmp_path)
    done = caddy("validate", "--adapter", "caddyfile", "--config", str(CADDYFILE), env=env)
    assert done.returncode == 0, done.stderr
    assert "Valid configuration" in done.stdout + done.stderr
    formatted = caddy("fmt", str(CADDYFILE), env=env)
    assert formatted.returncode == 0, formatted.stderr
    assert formatted.stdout == CADDYFILE.read_text(), "run `caddy fmt --overwrite` on it"

    config = adapt(env)
    proxy = reverse_proxy(config)
    assert [u["dial"] for u in proxy["upstreams"]] == ["app-1:3000", "app-2:3000"]
    active = proxy["health_checks"]["active"]
    assert active["uri"] == "/ready"
    assert active["port"] == Settings.model_fields["port"].default == 8099
    assert active["expect_status"] == 200
    interval, timeout = active["interval"] / NS, active["timeout"] / NS
    drain = Settings.model_fields["drain_seconds"].default
    assert timeout <= interval
    for fails in (1, 2):  # Caddy 2.6 (one failed check), 2.8+ with health_fails 2
        assert fails * interval + timeout <= drain / 2, (fails, interval, timeout, drain)
    # A 5xx from the app itself must never take it out (its /api/health answers 503).
    assert "unhealthy_status" not in proxy["health_checks"].get("passive", {})
    assert config["admin"]["listen"].startswith("localhost:")


async def test_unhealthy_app_is_taken_out_and_comes_back(fleet: Fleet) -> None:
    """app-2's own health turns 500 while it still serves requests: its sidecar's critical
    `app` check fails, /ready turns 503, and Caddy stops routing to it - every request
    through Caddy is answered by app-1, none fails, and Caddy's own metrics (admin API and
    the scrape site) report the upstream unhealthy. When app-2 recovers, traffic reaches
    both again. Prints the measured time from the app check failing to Caddy taking the
    upstream out."""
    app1, app2 = fleet.containers
    await fleet.wait_served_by({"app-1", "app-2"}, within=10)
    assert await fleet.gauge(app2) == 1

    stop = asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(fleet.url, stop, rate=50, max_requests=400))
    await asyncio.sleep(0.5)
    flipped, flipped_wall = time.monotonic(), time.time()
    app2.app.healthy = False
    to_ready_503 = await wait_for(app2.sidecar.url + "/ready", 503, within=5)
    await asyncio.sleep(2.0)
    stop.set()
    hits = await traffic

    failed = [h for h in hits if not h.ok]
    assert failed == [], f"{len(failed)} of {len(hits)} requests failed: {failed[:5]}"
    via_app2 = [h.sent - flipped for h in hits if h.body == "app-2" and h.sent >= flipped]
    last_to_app2 = max(via_app2, default=0.0)
    assert last_to_app2 < 5, f"Caddy still routed to app-2 {last_to_app2:.2f}s after"
    down = [
        line["ts"] - flipped_wall
        for line in fleet.caddy_log()
        if line.get("msg") == "unexpected status code"
        and line.get("host") == app2.sidecar.url.removeprefix("http://")
        and line["ts"] >= flipped_wall
    ]
    assert down, "Caddy's health checker never saw app-2's sidecar fail"
    caddy_out = min(down)

    seen = await fleet.served_by(30)
    assert seen == {"app-1": 30}, seen
    status, _ = await get_status(app2.app.url + "/still-serving")
    assert status == 200  # app-2 is up: Caddy chose not to route to it
    # Caddy 2.6 refreshes this gauge every 10 s, whatever the health_interval.
    await fleet.wait_gauge(app2, 0, within=15)
    gauge_0 = time.monotonic() - flipped
    assert await fleet.gauge(app1) == 1
    assert await fleet.gauge(app2, base=fleet.metrics) == 0  # the scrape site says the same
    print(
        f"\ncaddy failover (app check every 0.25s, 2 failures; Caddy health_interval "
        f"{fleet.caddy_interval}s): /ready 503 after {to_ready_503:.2f}s, Caddy's first "
        f"failed check {caddy_out:.2f}s, last request routed to app-2 sent at "
        f"{last_to_app2:.2f}s, {len(hits)} requests, 0 failed; "
        f"upstreams_healthy 0 after {gauge_0:.1f}s"
    )

    app2.app.healthy = True
    await fleet.wait_served_by({"app-1", "app-2"}, within=10)


async def test_rolling_restart_loses_no_request(fleet: Fleet) -> None:
    """A rolling restart of app-2 under steady traffic (40 req/s, GET and POST in turn,
    each request taking 50 ms in the app): SIGTERM its sidecar, which keeps serving with
    /ready 503 for the drain period (2 s) and then exits 0; only then does app-2 stop
    (abruptly, like a dying process). Not one client request through Caddy fails, and
    app-2 served its share until Caddy took it out."""
    _, app2 = fleet.containers
    await fleet.wait_served_by({"app-1", "app-2"}, within=10)
    stop = asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(fleet.url, stop, rate=40, max_requests=400))
    await asyncio.sleep(1.0)
    termed = time.monotonic()
    sigterm(app2.sidecar)
    drained = await until(lambda: app2.sidecar.popen.poll() is not None, within=15)
    assert app2.sidecar.popen.returncode == 0, app2.sidecar.output()[-2000:]
    assert drained >= fleet.drain_seconds * 0.9, f"the sidecar exited after {drained:.2f}s"
    app2.app.kill()
    await asyncio.sleep(1.0)
    stop.set()
    hits = await traffic

    failed = [h for h in hits if not h.ok]
    assert len(hits) >= 120, f"only {len(hits)} requests were sent"
    assert failed == [], f"{len(failed)} of {len(hits)} requests failed: {failed[:5]}"
    before = [h for h in hits if h.sent < termed]
    assert any(h.body == "app-2" for h in before), "app-2 never served: nothing was tested"
    # Caddy took app-2 out soon after SIGTERM, well before the drain ended.
    last_to_app2 = max(h.sent for h in hits if h.body == "app-2") - termed
    assert last_to_app2 < fleet.drain_seconds / 2, f"app-2 got requests {last_to_app2:.2f}s on"
    after = [h for h in hits if h.sent > termed + fleet.drain_seconds]
    assert after, "no traffic after the drain"
    assert {h.body for h in after} == {"app-1"}
    print(
        f"\nrolling restart: {len(hits)} requests, {len(failed)} failed; last request routed "
        f"to app-2 sent {last_to_app2:.2f}s after SIGTERM; the sidecar exited after "
        f"{drained:.2f}s"
    )


async def test_app_stopped_without_drain_loses_requests(fleet: Fleet) -> None:
    """The control for the rolling restart: app-2 stops abruptly while Caddy still routes
    to it (no SIGTERM to its sidecar, no drain) and while it has a POST in flight. That
    POST fails: Caddy 2.6 retries an interrupted GET on the other upstream (within
    lb_try_duration), never a POST that reached the app, so the zero failures of the
    rolling restart are the drain's doing, not Caddy's retries."""
    _, app2 = fleet.containers
    await fleet.wait_served_by({"app-1", "app-2"}, within=10)
    stop = asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(fleet.url, stop, rate=40, max_requests=400))
    await until(lambda: app2.app.in_flight["POST"] >= 1, within=10, step=0.002)
    app2.app.kill()
    await asyncio.sleep(1.0)
    stop.set()
    hits = await traffic
    failed = [h for h in hits if not h.ok]
    assert any(h.method == "POST" for h in failed), f"no POST failed: {failed}"
    print(f"\nno drain: {len(failed)} of {len(hits)} requests failed: {failed[:3]}")


async def test_both_unhealthy_caddy_answers_503(fleet: Fleet) -> None:
    """Both apps' health turns 500 (both still serve): both sidecars turn /ready 503 and
    Caddy, with no healthy upstream left, answers 503 (after lb_try_duration, 3 s, of
    trying) instead of routing to either. Once app-1 recovers, Caddy routes to it again."""
    app1, app2 = fleet.containers
    await fleet.wait_served_by({"app-1", "app-2"}, within=10)
    app1.app.healthy = app2.app.healthy = False
    for container in (app1, app2):
        await wait_for(container.sidecar.url + "/ready", 503, within=5)
    await asyncio.sleep(fleet.caddy_interval * 2)
    started = time.monotonic()
    status, _ = await get_status(fleet.url + "/page")
    took = time.monotonic() - started
    assert status == 503
    assert took >= 2.5, f"503 after {took:.2f}s: Caddy did not wait for a healthy upstream"
    for container in (app1, app2):
        assert (await get_status(container.app.url + "/page"))[0] == 200
    app1.app.healthy = True
    await fleet.wait_served_by({"app-1"}, within=10)


async def get_status(url: str) -> tuple[int, str]:
    """GET a page that is not JSON: (status, body)."""
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        return resp.status, await resp.text()
