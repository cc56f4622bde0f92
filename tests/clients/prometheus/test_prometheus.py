"""The real Prometheus, with the shipped config and alerts, scraping a real sidecar."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import faults, procs
from tests.support import prometheus as prom
from tests.support.daemon import metric, metrics_text, start_daemon, wait_for
from tests.support.procs import SECRET

# Every wait below is bounded by one of these. A check fails after 2 probes (1s apart, plus
# jitter), Prometheus scrapes every second: a few seconds normally, generous on a busy box.
CONVERGE = 30.0
STARTUP = 30.0

View = tuple[dict[str, float], float]


@pytest.fixture
async def app_server() -> AsyncIterator[faults.FaultServer]:
    """The app container beside the sidecar: answers 200 until told otherwise."""
    async with faults.fault_server(faults.respond(200, b'{"ok":true}')) as server:
        yield server


async def sidecar_view(url: str) -> View:
    """`sidecar_check_up` per check and `sidecar_ready`, from the sidecar's own /metrics."""
    text = await metrics_text(url)
    up = {
        check: float(value)
        for check, value in re.findall(r'^sidecar_check_up\{check="([^"]+)"\} (\S+)$', text, re.M)
    }
    return up, metric(text, "sidecar_ready")


async def prometheus_view(url: str) -> View:
    """The same two, through Prometheus' query API."""
    up = {
        series["metric"]["check"]: float(series["value"][1])
        for series in await prom.query(url, f'sidecar_check_up{{job="{prom.JOB}"}}')
    }
    ready = await prom.query(url, f'sidecar_ready{{job="{prom.JOB}"}}')
    return up, float(ready[0]["value"][1]) if len(ready) == 1 else float("nan")


async def converge(sidecar: procs.Proc, prometheus: procs.Proc, expected: View) -> View:
    """Wait until the sidecar's /metrics and Prometheus both report `expected`."""
    seen: list[tuple[View, View]] = []

    async def probe() -> View | None:
        own, through = await sidecar_view(sidecar.url), await prometheus_view(prometheus.url)
        seen.append((own, through))
        return through if own == through == expected else None

    return await prom.eventually(
        probe,
        within=CONVERGE,
        what=lambda: f"expected {expected}; last (sidecar, prometheus): {seen[-1:]}",
    )


async def alerts(url: str, state: str) -> dict[str, dict[str, str]]:
    """Alerts in `state` (pending/firing), by alertname, with their labels."""
    data = await prom.api(url, "alerts")
    return {a["labels"]["alertname"]: a["labels"] for a in data["alerts"] if a["state"] == state}


async def test_prometheus_sees_what_the_sidecar_reports(
    convex_local: procs.Proc,
    mastra_local: procs.Proc,
    app_server: faults.FaultServer,
    tmp_path: Path,
) -> None:
    """Prometheus 2.42 with config/prometheus.yml (1s intervals, one loopback target) and
    config/alerts.yml scrapes a sidecar whose `app` check hits a fault server: the target is
    up with the relabelled instance; `sidecar_check_up` and `sidecar_ready` through the query
    API equal the sidecar's own /metrics while everything passes, after the app answers 500
    (app 0, not ready, SidecarCheckFailing and SidecarNotReady pending for that check and
    instance, every rule evaluating without error) and after it recovers."""
    env = {
        "CONVEX_URL": convex_local.url,
        "MASTRA_URL": mastra_local.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_APP_URL": app_server.url,
        "SIDECAR_INSTANCE": "it-prometheus",
        "SIDECAR_INTERVAL": "1",
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    # Blocking starts run in threads: the fault server lives in this event loop.
    sidecar = await asyncio.to_thread(start_daemon, env, tmp_path / "daemon.log")
    try:
        await wait_for(sidecar.url + "/ready", 200, within=STARTUP)
        target = sidecar.url.removeprefix("http://")
        prometheus = await asyncio.to_thread(prom.start, target, tmp_path / "prometheus")
        try:
            await scenario(sidecar, prometheus, app_server, target)
        except BaseException:
            print(prometheus.output()[-4000:])
            raise
        finally:
            await asyncio.to_thread(prometheus.stop)
    finally:
        await asyncio.to_thread(sidecar.stop)


async def scenario(
    sidecar: procs.Proc, prometheus: procs.Proc, app: faults.FaultServer, target: str
) -> None:
    """The steps of the test above: target up, pass, app fails, pending alerts, recovery."""
    last: dict[str, Any] = {}

    async def target_up() -> dict[str, Any] | None:
        data = await prom.api(prometheus.url, "targets", state="active")
        # The shipped config also scrapes Caddy (caddy:2020), which does not exist here.
        last["targets"] = [t for t in data["activeTargets"] if t["labels"]["job"] == prom.JOB]
        ups = [t for t in last["targets"] if t["health"] == "up"]
        return ups[0] if ups else None

    scraped = await prom.eventually(
        target_up, within=STARTUP, what=lambda: f"no target up: {last.get('targets')}"
    )
    assert len(last["targets"]) == 1
    assert scraped["labels"] == {"job": prom.JOB, "instance": "127.0.0.1"}  # port relabelled away
    assert scraped["scrapeUrl"] == f"http://{target}/metrics"
    assert scraped["lastError"] == ""

    everything_passes: View = ({"convex": 1.0, "mastra": 1.0, "app": 1.0}, 1.0)
    await converge(sidecar, prometheus, everything_passes)

    app.behaviour = faults.respond(500, b"down")
    app_fails: View = ({"convex": 1.0, "mastra": 1.0, "app": 0.0}, 0.0)
    await converge(sidecar, prometheus, app_fails)
    status = await prom.query(
        prometheus.url, f'sidecar_check_status{{job="{prom.JOB}", status="fail"}} == 1'
    )
    assert [s["metric"]["check"] for s in status] == ["app"]

    async def pending() -> dict[str, dict[str, str]] | None:
        last["pending"] = found = await alerts(prometheus.url, "pending")
        return found if {"SidecarCheckFailing", "SidecarNotReady"} <= set(found) else None

    found = await prom.eventually(
        pending, within=CONVERGE, what=lambda: f"pending alerts: {last.get('pending')}"
    )
    assert found["SidecarCheckFailing"]["check"] == "app"
    assert found["SidecarCheckFailing"]["instance"] == "127.0.0.1"
    assert found["SidecarNotReady"]["instance"] == "127.0.0.1"
    assert "SidecarDown" not in found
    firing = await alerts(prometheus.url, "firing")
    assert not {"SidecarCheckFailing", "SidecarNotReady"} & set(firing)  # `for: 2m` holds them

    rules = [r for g in (await prom.api(prometheus.url, "rules"))["groups"] for r in g["rules"]]
    shipped = re.findall(r"^\s*- alert: (\w+)$", (prom.CONFIG / "alerts.yml").read_text(), re.M)
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
    assert not broken

    app.behaviour = faults.respond(200, b'{"ok":true}')
    await converge(sidecar, prometheus, everything_passes)

    async def cleared() -> bool | None:
        last["pending"] = found = await alerts(prometheus.url, "pending")
        return True if not {"SidecarCheckFailing", "SidecarNotReady"} & set(found) else None

    await prom.eventually(
        cleared, within=CONVERGE, what=lambda: f"still pending: {last.get('pending')}"
    )
