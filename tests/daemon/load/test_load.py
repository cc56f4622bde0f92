"""Load: /ready and /health under thousands of requests per second while a dependency hangs.

The hung dependency is a non-critical `http` check (set in a SIDECAR_CONFIG TOML file), so the
only right answer from both endpoints is 200 (/health says "degraded"): any other status is
an error. Had it been critical, /ready would answer 503 throughout, and a real failure under
load (a starved scheduler letting Convex or Mastra go stale, a stuck heartbeat) would hide
among the expected 503s; with 200 expected, every slip shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support import faults, procs
from tests.support.daemon import get, metrics_text, start_daemon, wait_for
from tests.support.measure import WrkResult, run_wrk_async, write_script
from tests.support.procs import SECRET
from tests.support.soaking import series_sum

pytestmark = [pytest.mark.serial, pytest.mark.slow]

SECONDS = 30
MIN_RPS = 2000
CONNECTIONS = 25  # per endpoint: 50 in all
P99_MS = 50.0


def hung_config(path: Path, hung_url: str) -> Path:
    """A TOML file adding a non-critical check of a dependency that never answers."""
    path.write_text(
        f'[[checks]]\nname = "hung"\nkind = "http"\ntarget = "{hung_url}"\ncritical = false\n'
    )
    return path


def describe(name: str, result: WrkResult) -> str:
    return (
        f"{name}: {result.rps:,.0f} req/s over {result.seconds:.1f} s, p50 {result.p50_ms:.2f} "
        f"ms, p99 {result.p99_ms:.2f} ms, max {result.max_ms:.1f} ms, statuses "
        f"{result.statuses}, socket errors {result.socket_errors}"
    )


async def test_ready_and_health_under_load_with_a_hung_dependency(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Convex and Mastra pass, a third dependency hangs (non-critical), checks run every
    second; wrk hammers /ready and /health at once (25 connections each) for 30 s: each
    endpoint serves at least 2,000 requests per second, every answer is 200, no socket error
    or timeout, p99 under 50 ms; meanwhile every check keeps running on time and the hung
    one keeps failing by timeout, and no check loop crashed."""
    async with faults.fault_server(faults.hang()) as hung:
        env = {
            "CONVEX_URL": convex_local.url,
            "MASTRA_URL": mastra_local.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": "load-hung",
            "SIDECAR_INTERVAL": "1",
            "SIDECAR_TIMEOUT": "0.5",
            "SIDECAR_DRAIN_SECONDS": "0.5",
            "SIDECAR_CONFIG": str(hung_config(tmp_path / "sidecar.toml", hung.url)),
        }
        daemon = start_daemon(env, tmp_path / "daemon.log")
        try:
            await wait_for(daemon.url + "/ready", 200, within=10)
            await wait_for(daemon.url + "/health", 200, within=5)
            before = await metrics_text(daemon.url)
            script = write_script(tmp_path, count_statuses=True)
            ready, health = await asyncio.gather(
                *(
                    run_wrk_async(
                        daemon.url + path,
                        script,
                        connections=CONNECTIONS,
                        threads=1,
                        seconds=SECONDS,
                    )
                    for path in ("/ready", "/health")
                )
            )
            after = await metrics_text(daemon.url)
            status, body = await get(daemon.url + "/health")
        finally:
            exit_code = daemon.stop()
    assert exit_code == 0
    report = describe("/ready", ready) + "\n" + describe("/health", health)
    print(report)
    for result in (ready, health):
        assert result.unexpected(200) == 0, report
        assert result.statuses == {200: result.requests}, report
        assert result.rps >= MIN_RPS, report
        assert result.p99_ms < P99_MS, report
    assert status == 200
    assert body["status"] == "degraded"
    assert body["services"] == {"convex": "ok", "mastra": "ok", "hung": "error", "store": "ok"}

    def runs(text: str, check: str, result: str) -> float:
        return series_sum(text, "sidecar_check_runs_total", check=check, result=result)

    # Every check ran about once a second during the 30 s (jitter is 10%): none was starved.
    for check in ("convex", "mastra"):
        assert runs(after, check, "pass") - runs(before, check, "pass") >= SECONDS * 0.8, check
        assert runs(after, check, "fail") == runs(before, check, "fail"), check
    assert runs(after, "hung", "fail") - runs(before, "hung", "fail") >= SECONDS * 0.8
    assert series_sum(after, "sidecar_check_crashes_total") == 0
    assert hung.requests >= SECONDS * 0.8
