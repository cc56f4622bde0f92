"""The benchmarks' set-up (bench/common.py) brings the daemon to a passing /ready, and the
fleet benchmark's (bench/fleet_verdicts.py) measures a fault end to end.

Benchmarks are run by hand, not by `make test`: this is what notices a change that would
leave one waiting for a /ready that never comes (as a dependency stand-in that did not speak
the store's protocol once did).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from bench.common import daemon, daemon_env, fetch, stand_ins
from bench.fleet_verdicts import Options, measure
from bench.idle import ten_checks
from tests.support import procs
from tests.support.switch import tcp_proxy


def test_the_benchmarks_stand_ins_bring_every_check_to_pass(tmp_path: Path) -> None:
    """bench/idle.py's ten checks against the stand-ins: /ready 200, every check passing."""
    with stand_ins(tmp_path) as peers:
        dep = peers.dep.url
        env = daemon_env(peers.convex.url, dep, SIDECAR_CHECKS=ten_checks(dep))
        with daemon(env, tmp_path / "daemon.log", wait="ready") as proc:
            status, body = fetch(proc.url + "/health?verbose")
    assert status == 200, body
    checks = json.loads(body)["checks"]
    assert len(checks) == 10, checks
    assert {name: c["status"] for name, c in checks.items()} == dict.fromkeys(checks, "pass")


@pytest.mark.serial
@pytest.mark.slow
async def test_the_fleet_verdicts_benchmark_measures_a_local_fault(
    mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """bench/fleet_verdicts.py's scenario 1, end to end at small settings (0.5 s checks, a
    1 s store period, Caddy every 250 ms): five sidecars behind Caddy, each with its own Mastra
    and Convex proxy; Mastra fails for app-1 alone. Every figure comes in (none "not within"),
    in the order cause and effect allow, and the other four stay ready."""
    opts = Options(
        interval=0.5, timeout=0.3, store_interval=1, drain_seconds=0.5, caddy_interval="250ms"
    )
    results = await measure([1], opts, tmp_path, mastra_local.url)
    figures = results[1]
    first, ready_503 = figures["first_failed_probe_s"], figures["ready_503_s"]
    caddy = figures["caddy_first_failed_check_s"]
    assert None not in (first, ready_503, caddy, figures["caddy_gauge_0_s"]), figures
    assert 0 <= first <= ready_503, figures
    # Polled every 0.1 s, a status is seen up to that much later than Caddy's logged check.
    assert ready_503 - 0.2 <= caddy <= figures["caddy_gauge_0_s"] + 0.2, figures
    assert first < 2 * opts.interval, figures  # the fault met the next probe
    assert figures["ready_503_after_first_failed_probe_s"] == pytest.approx(
        ready_503 - first, abs=0.02
    )
    assert figures["samples"] > 10, figures
    assert figures["others_unready_samples"] == 0, figures


async def test_a_cut_tcp_proxy_drops_open_connections_and_refuses_new_ones(
    convex_local: procs.Proc,
) -> None:
    """The Convex proxy of each benchmark sidecar: dev/convex-local answers through it; cut,
    a kept-alive connection is dropped and a new one refused; restored, it answers again on
    the same port."""
    async with tcp_proxy(convex_local.url) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/version") as resp:
            assert resp.status == 200
            await resp.read()
        port = proxy.port
        await proxy.cut()
        assert proxy.is_cut
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(proxy.url + "/version") as resp:  # the kept-alive one
                await resp.read()
        with pytest.raises(ConnectionRefusedError):  # a new connection
            await asyncio.open_connection("127.0.0.1", port)
        await proxy.restore()
        async with session.get(proxy.url + "/version") as resp:
            assert resp.status == 200
        assert proxy.port == port
        assert proxy.connections >= 2
