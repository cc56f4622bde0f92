"""The whole daemon as a subprocess, against dev/convex-local and the real Mastra server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.sync import SyncTiming
from tests.support import convex, faults, procs
from tests.support.daemon import (
    get,
    log_lines,
    metric,
    metrics_text,
    spawn_daemon,
    start_daemon,
    wait_for,
)
from tests.support.procs import SECRET
from tests.support.switch import switch_server

INTERVAL = 1.0
TIMEOUT = 0.5


@pytest.fixture
def mastra(tmp_path: Path) -> Iterator[procs.Proc]:
    with procs.mastra(tmp_path / "mastra.log") as proc:
        yield proc


@pytest.fixture
async def app_server() -> AsyncIterator[faults.FaultServer]:
    """The app container beside the sidecar: answers 200 until told otherwise."""
    async with faults.fault_server(faults.respond(200, b'{"ok":true}')) as server:
        yield server


def daemon_env(convex: procs.Proc, mastra_url: str, instance: str, **extra: str) -> dict[str, str]:
    return {
        "CONVEX_URL": convex.url,
        "MASTRA_URL": mastra_url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": str(INTERVAL),
        "SIDECAR_TIMEOUT": str(TIMEOUT),
        "SIDECAR_DRAIN_SECONDS": "1",
        **extra,
    }


async def test_ready_after_first_round_and_rows_in_convex(
    convex_local: procs.Proc,
    mastra: procs.Proc,
    app_server: faults.FaultServer,
    tmp_path: Path,
) -> None:
    """Convex, Mastra and the app answer: ready after the first round, every row in Convex,
    and every log line is JSON with the scaling guide's fields."""
    env = daemon_env(convex_local, mastra.url, "it-ready", SIDECAR_APP_URL=app_server.url)
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/ready", 200, within=5)
        status, body = await get(daemon.url + "/health")
        assert status == 200
        assert body["services"] == {"convex": "ok", "mastra": "ok", "app": "ok", "store": "ok"}
        deadline = time.monotonic() + 5
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline and len(rows) < 3:
            rows = await convex.instance_results(convex_local.url, "it-ready")
            await asyncio.sleep(0.1)
        assert sorted(str(r["check"]) for r in rows) == ["app", "convex", "mastra"]
        assert all(r["status"] == "pass" for r in rows)
    finally:
        assert daemon.stop() == 0
    lines = log_lines(daemon)
    assert lines, "the daemon logged nothing"
    for line in lines:
        assert {"timestamp", "level", "component", "message", "containerId"} <= set(line)
        assert line["containerId"] == "it-ready"
    assert any(line["message"] == "ready" for line in lines)


async def test_mastra_outage_and_recovery(
    convex_local: procs.Proc, app_server: faults.FaultServer, tmp_path: Path
) -> None:
    """Mastra stops: /health 503 with services.mastra "error" and /ready 503 within
    (thresholds x interval) + timeout, /live stays 200; Mastra back: ready again."""
    port = procs.free_port()
    mastra_url = f"http://127.0.0.1:{port}"
    env = daemon_env(convex_local, mastra_url, "it-mastra", SIDECAR_APP_URL=app_server.url)
    mastra = procs.start_mastra(tmp_path / "m1.log", port)
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/ready", 200, within=5)
        mastra.stop()
        # Default thresholds: two failures in a row, each within interval (+jitter) + timeout;
        # then the wait for the fleet's count (Mastra is a panic check): an interval + grace.
        grace = SyncTiming(period=60, timeout=2).grace
        budget = 3 * INTERVAL * 1.1 + TIMEOUT + 0.5 + grace
        took = await wait_for(daemon.url + "/ready", 503, within=budget + 1)
        assert took <= budget
        status, body = await get(daemon.url + "/health")
        assert (status, body["services"]["mastra"], body["status"]) == (503, "error", "error")
        assert (await get(daemon.url + "/live"))[0] == 200
        mastra = procs.start_mastra(tmp_path / "m2.log", port)
        await wait_for(daemon.url + "/ready", 200, within=INTERVAL * 1.1 + TIMEOUT + 0.5)
        assert (await get(daemon.url + "/health"))[1]["services"]["mastra"] == "ok"
    finally:
        mastra.stop()
        assert daemon.stop() == 0
    changes = [line for line in log_lines(daemon) if line.get("check") == "mastra"]
    assert [line["to"] for line in changes] == ["pass", "fail", "pass"]


async def test_warm_start_from_the_last_sync(convex_local: procs.Proc, tmp_path: Path) -> None:
    """A stopped daemon's last sync confirms its results; a daemon restarted soon after with
    the same configuration serves the passing Mastra result at once and is ready before its
    own first Mastra probe has finished (that one hangs). Both are long past their first
    round's syncs when stopped: only the last sync (at exit) makes the result fresh."""
    with procs.mastra(tmp_path / "mastra.log") as mastra:
        async with switch_server(upstream=mastra.url) as mastra_proxy:
            env = daemon_env(
                convex_local,
                mastra_proxy.url,
                "it-warm",
                SIDECAR_INTERVAL="2",
                SIDECAR_TIMEOUT="1.5",
            )
            # In a thread: the proxy in this event loop must answer while the daemon starts.
            first = await asyncio.to_thread(start_daemon, env, tmp_path / "first.log")
            try:
                await wait_for(first.url + "/ready", 200, within=5)
                # Longer than a result stays fresh (2 x 2 s + 1.5 s): without the last sync,
                # the stored results would be stale by the time the next daemon starts.
                await asyncio.sleep(6)
            finally:
                assert await asyncio.to_thread(first.stop) == 0
            mastra_proxy.inject(faults.hang())
            second = await asyncio.to_thread(start_daemon, env, tmp_path / "second.log")
            try:
                took = await wait_for(second.url + "/ready", 200, within=1.4)
                assert took < 1.4  # the hung probe cannot have finished: it takes 1.5 s
                # Its own probes fail (twice, then the wait for the fleet's count).
                grace = SyncTiming(period=60, timeout=2).grace
                await wait_for(second.url + "/ready", 503, within=3 * 2 + 1.5 + grace + 2)
            finally:
                await asyncio.to_thread(second.stop)
    warm = [line for line in log_lines(second) if line["message"] == "warm start"]
    assert [line["checks"] for line in warm] == [["convex", "mastra"]]


async def test_no_warm_start_across_a_changed_target(
    convex_local: procs.Proc, tmp_path: Path
) -> None:
    """Restarted with MASTRA_URL pointing somewhere else (a dead address that hangs), the
    daemon does not restore the old passing Mastra result: it is not ready until its own
    probe decides, and `mastra` is unknown meanwhile."""
    with procs.mastra(tmp_path / "mastra.log") as mastra:
        env = daemon_env(
            convex_local, mastra.url, "it-moved", SIDECAR_INTERVAL="5", SIDECAR_TIMEOUT="3"
        )
        first = start_daemon(env, tmp_path / "first.log")
        try:
            await wait_for(first.url + "/ready", 200, within=5)
        finally:
            assert first.stop() == 0
    async with faults.fault_server(faults.hang()) as hung:
        env = daemon_env(
            convex_local, hung.url, "it-moved", SIDECAR_INTERVAL="5", SIDECAR_TIMEOUT="3"
        )
        second = start_daemon(env, tmp_path / "second.log")
        try:
            await asyncio.sleep(1.5)
            status, body = await get(second.url + "/ready")
        finally:
            second.stop()
    assert status == 503
    assert "mastra is unknown" in body["reasons"]
    warm = [line["checks"] for line in log_lines(second) if line["message"] == "warm start"]
    assert warm == [["convex"]]  # the convex check's definition did not change


async def test_sigterm_timeline(
    convex_local: procs.Proc, mastra: procs.Proc, tmp_path: Path
) -> None:
    """SIGTERM: /ready 503 at once, /live and /health keep serving for the drain period,
    then exit 0."""
    env = daemon_env(convex_local, mastra.url, "it-drain", SIDECAR_DRAIN_SECONDS="2")
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/ready", 200, within=5)
        sent = time.monotonic()
        os.kill(daemon.popen.pid, signal.SIGTERM)
        assert await wait_for(daemon.url + "/ready", 503, within=1) < 0.5
        while time.monotonic() - sent < 1.5:
            assert (await get(daemon.url + "/live"))[0] == 200
            assert (await get(daemon.url + "/health"))[0] == 200
            await asyncio.sleep(0.1)
        code = daemon.popen.wait(timeout=5)
        elapsed = time.monotonic() - sent
    finally:
        daemon.stop()
    assert code == 0
    assert 2.0 <= elapsed < 4.0


async def test_second_signal_exits_at_once(
    convex_local: procs.Proc, mastra: procs.Proc, tmp_path: Path
) -> None:
    """A second signal during the drain ends the process at once."""
    env = daemon_env(convex_local, mastra.url, "it-force", SIDECAR_DRAIN_SECONDS="30")
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        os.kill(daemon.popen.pid, signal.SIGTERM)
        await wait_for(daemon.url + "/ready", 503, within=1)
        sent = time.monotonic()
        os.kill(daemon.popen.pid, signal.SIGINT)
        code = daemon.popen.wait(timeout=3)
    finally:
        daemon.stop()
    assert code == 0
    assert time.monotonic() - sent < 2


async def test_hung_dependency_leaves_endpoints_fast(
    convex_local: procs.Proc, tmp_path: Path
) -> None:
    """Mastra accepts and never answers: every endpoint still answers in milliseconds."""
    async with faults.fault_server(faults.hang()) as hung:
        env = daemon_env(convex_local, hung.url, "it-hung", SIDECAR_TIMEOUT="0.9")
        daemon = start_daemon(env, tmp_path / "daemon.log")
        try:
            async with aiohttp.ClientSession() as session:
                worst = 0.0
                for _ in range(50):
                    for path in ("/live", "/ready", "/health", "/metrics"):
                        started = time.monotonic()
                        async with session.get(daemon.url + path) as resp:
                            await resp.read()
                        worst = max(worst, time.monotonic() - started)
                    await asyncio.sleep(0.02)
            assert worst < 0.25, f"slowest answer {worst * 1000:.1f} ms"
            assert hung.requests >= 1
        finally:
            daemon.stop()


async def test_wrong_secret_store_warns_probing_goes_on(
    convex_local: procs.Proc, mastra: procs.Proc, tmp_path: Path
) -> None:
    """A wrong secret: services.store "error" (200, degraded, still ready), one log line,
    and probing goes on."""
    env = daemon_env(
        convex_local, mastra.url, "it-secret", HEALTH_SIDECAR_SECRET="wrong-secret-0123456789"
    )
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/ready", 200, within=5)
        deadline = time.monotonic() + 5
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            status, body = await get(daemon.url + "/health")
            if body["services"]["store"] == "error":  # type: ignore[index]
                break
            await asyncio.sleep(0.1)
        assert (status, body["status"]) == (200, "degraded")
        await asyncio.sleep(2.5 * INTERVAL)
        text = await metrics_text(daemon.url)
        runs = metric(text, 'sidecar_check_runs_total{check="mastra",result="pass"}')
        refused = metric(text, 'sidecar_store_requests_total{op="sync",result="unauthorized"}')
        assert runs >= 3
        assert refused >= 2
    finally:
        daemon.stop()
    failing = [line for line in log_lines(daemon) if line["message"] == "store failing"]
    assert len(failing) == 1
    assert failing[0]["error"] == "unauthorized"
    assert await convex.instance_results(convex_local.url, "it-secret") == []


async def test_metrics_are_promtool_clean(
    convex_local: procs.Proc, mastra: procs.Proc, tmp_path: Path
) -> None:
    """The real /metrics page, with a passing and a failing check, passes
    `promtool check metrics` without a single lint message."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    env = daemon_env(convex_local, mastra.url, "it-promtool", SIDECAR_APP_URL=faults.refused_url())
    daemon = start_daemon(env, tmp_path / "daemon.log")
    try:
        await wait_for(daemon.url + "/health", 503, within=5)
        text = await metrics_text(daemon.url)
    finally:
        daemon.stop()
    assert 'sidecar_check_up{check="app"} 0.0' in text
    assert 'sidecar_check_up{check="mastra"} 1.0' in text
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    assert lint.stdout.decode().strip() == ""
    assert lint.stderr.decode().strip() == ""


def test_a_signal_at_start_drains_like_any_other(convex_local: procs.Proc, tmp_path: Path) -> None:
    """SIGTERM a few milliseconds after the start, long before the daemon listens: it is not
    killed by the default handler; it starts, drains (here for no time) and exits 0."""
    env = daemon_env(convex_local, "http://127.0.0.1:9", "it-early", SIDECAR_DRAIN_SECONDS="0")
    log = tmp_path / "daemon.log"
    popen = spawn_daemon(env, log).popen
    try:
        time.sleep(0.15)  # past the interpreter's start, well before it listens (~0.3 s)
        assert popen.poll() is None
        os.kill(popen.pid, signal.SIGTERM)
        code = popen.wait(timeout=15)
    finally:
        procs.stop_process(popen)
    messages = [json.loads(line)["message"] for line in log.read_text().splitlines() if line]
    assert code == 0, log.read_text()
    assert messages.index("listening") < messages.index("draining") < messages.index("stopped")
