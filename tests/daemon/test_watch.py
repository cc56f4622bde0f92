"""The subscription to `health:watch`, end to end: real daemons against dev/convex-local (its
WebSocket sync protocol) and the real Mastra. A drain through the CLI turns /ready 503 at once
(long before the next sync) and the CLI returns acknowledged; undrain the same. With the
WebSocket dropped by a proxy the daemon polls: `sidecar_store_subscribed 0`, one log line, and
a drain still acts at the next sync. With two daemons, one's failing panic check makes the other
probe it at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import convex, faults, procs
from tests.support.daemon import cli as daemon_cli
from tests.support.daemon import (
    get,
    log_lines,
    member_env,
    metrics_text,
    start_daemon,
    wait_for,
)
from tests.support.procs import OPERATOR_SECRET, SECRET
from tests.support.switch import SwitchServer, switch_server

pytestmark = pytest.mark.slow

MASTRA_DOWN = b'{"success":false}'
SUBSCRIBED = "sidecar_store_subscribed"


@pytest.fixture(scope="module")
def watch_convex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """A stand-in of this module's own (the fleet's counts are of these daemons only)."""
    with procs.convex_local(tmp_path_factory.mktemp("watch-convex") / "out.log", SECRET) as proc:
        yield proc


def env(convex_url: str, name: str, mastra: str, **extra: str) -> dict[str, str]:
    # A long store period: what happens within a second came by the subscription.
    return member_env(convex_url, name, mastra, interval=1, timeout=0.5, store_interval=30, **extra)


def cli(convex_url: str, *args: str) -> Any:
    return daemon_cli(
        *args,
        env={
            "CONVEX_URL": convex_url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
        },
    )


def series(text: str, name: str) -> float:
    """The sum of every sample of `name` on a metrics page (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rpartition(" ")[2])
    return total


async def until_metric(url: str, name: str, value: float, *, within: float) -> float:
    """Poll /metrics until `name` is `value`; how long that took."""
    started = time.monotonic()
    last = None
    while time.monotonic() - started < within:
        last = series(await metrics_text(url), name)
        if last == value:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} stayed {last}, not {value}, for {within}s")


async def first_status(url: str, status: int, *, within: float) -> float | None:
    """Poll /ready every 20 ms; seconds until it answered `status` (None: never)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if (await get(url + "/ready", within=2))[0] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    return None


async def timed_cli(convex_url: str, url: str, status: int, *args: str) -> tuple[Any, float | None]:
    """Run the CLI in a thread while timing /ready's turn to `status` from the CLI's start."""
    command = asyncio.create_task(asyncio.to_thread(cli, convex_url, *args))
    took = await first_status(url, status, within=8)
    return await command, took


@contextlib.asynccontextmanager
async def daemon(
    convex_url: str, name: str, mastra: str, tmp: Path, **extra: str
) -> AsyncIterator[procs.Proc]:
    proc = await asyncio.to_thread(start_daemon, env(convex_url, name, mastra, **extra), tmp)
    try:
        await wait_for(proc.url + "/ready", 200, within=10)
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


async def test_drain_and_undrain_take_effect_at_once_and_the_cli_waits_for_them(
    watch_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Subscribed (`sidecar_store_subscribed 1`), `drain --instance w-a` turns w-a's /ready
    503 within a second or so (the store period is 30 s: polling would take up to 30 s), and
    the CLI prints `acknowledged: w-a` and exits 0 once w-a's summary in Convex says drained;
    `undrain` the same way back."""
    async with daemon(watch_convex.url, "w-a", mastra_local.url, tmp_path / "a.log") as proc:
        await until_metric(proc.url, SUBSCRIBED, 1.0, within=10)
        args = ("drain", "--instance", "w-a", "--reason", "kernel upgrade", "--timeout", "8s")
        drained, drain_took = await timed_cli(watch_convex.url, proc.url, 503, *args)
        _, ready = await get(proc.url + "/ready")
        undrain = ("undrain", "--instance", "w-a", "--timeout", "8s")
        undrained, undrain_took = await timed_cli(watch_convex.url, proc.url, 200, *undrain)
        logs = log_lines(proc)
    assert drained.returncode == 0, drained
    assert "drained: w-a" in drained.stdout
    assert "acknowledged: w-a" in drained.stdout
    assert drain_took is not None
    assert drain_took < 5, drain_took
    assert ready == {"ready": False, "reasons": ["drained: kernel upgrade"]}
    assert undrained.returncode == 0, undrained
    assert "acknowledged: w-a" in undrained.stdout
    assert undrain_took is not None
    assert undrain_took < 5, undrain_took
    assert [line["message"] for line in logs if line["message"] == "subscribed"] == ["subscribed"]


async def drop(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close the connection without an answer: a proxy that drops WebSocket upgrades."""
    writer.close()


async def test_without_the_websocket_it_polls_and_a_drain_acts_at_the_next_sync(
    watch_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Behind a proxy on 127.0.0.1 that forwards HTTP but drops every request to /api/sync,
    the daemon serves and probes as before, `sidecar_store_subscribed` stays 0, one log line
    says it polls (and why), and a drain still takes it out at its next sync (store period
    1 s here); the CLI's wait still ends acknowledged."""
    async with switch_server(upstream=watch_convex.url) as proxy:
        proxy.inject(drop, paths=("/api/sync",))
        extra = {"SIDECAR_STORE_INTERVAL": "1"}
        async with daemon(proxy.url, "w-p", mastra_local.url, tmp_path / "p.log", **extra) as proc:
            await asyncio.sleep(3)  # five failed connects with backoff: about 1.5 s
            text = await metrics_text(proc.url)
            args = ("drain", "--instance", "w-p", "--reason", "polling", "--timeout", "8s")
            drained = await asyncio.to_thread(cli, watch_convex.url, *args)
            took = await wait_for(proc.url + "/ready", 503, within=5)
            undrained = await asyncio.to_thread(
                cli, watch_convex.url, "undrain", "--instance", "w-p"
            )
            await wait_for(proc.url + "/ready", 200, within=5)
            hits = proxy.fault_hits
            logs = log_lines(proc)
    assert f"{SUBSCRIBED} 0.0" in text
    assert series(text, "sidecar_check_up") >= 1.0
    assert hits >= 5
    polling = [line for line in logs if line["message"] == "subscription unavailable: polling"]
    assert len(polling) == 1, polling
    assert "connections failed" in polling[0]["reason"]
    assert not [line for line in logs if line["message"] == "subscribed"]
    assert drained.returncode == 0, drained
    assert "acknowledged: w-p" in drained.stdout
    assert took < 5
    assert undrained.returncode == 0, undrained


async def test_a_panic_check_failing_elsewhere_is_probed_here_at_once(
    watch_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Two daemons; w-late probes Mastra only every 60 s. When w-fast's Mastra fails (its
    proxy answers 503), Convex's verdict counts it, the subscription tells w-late, and
    w-late probes Mastra at once: its run counter rises within seconds, not a minute."""
    async with contextlib.AsyncExitStack() as stack:
        proxy: SwitchServer = await stack.enter_async_context(
            switch_server(upstream=mastra_local.url)
        )
        fast = await stack.enter_async_context(
            daemon(watch_convex.url, "w-fast", proxy.url, tmp_path / "fast.log")
        )
        late = await stack.enter_async_context(
            daemon(
                watch_convex.url,
                "w-late",
                mastra_local.url,
                tmp_path / "late.log",
                SIDECAR_INTERVAL="60",
                SIDECAR_FAST_INTERVAL="1",
            )
        )
        for proc in (fast, late):
            await until_metric(proc.url, SUBSCRIBED, 1.0, within=10)
        runs = 'sidecar_check_runs_total{check="mastra",result="pass"}'
        before = series(await metrics_text(late.url), runs)
        proxy.inject(faults.respond(503, MASTRA_DOWN))
        started = time.monotonic()
        rose = None
        while time.monotonic() - started < 20:
            if series(await metrics_text(late.url), runs) > before:
                rose = time.monotonic() - started
                break
            await asyncio.sleep(0.1)
        fast_health = await get(fast.url + "/health")
    assert fast_health[1]["services"]["mastra"] == "error"
    assert rose is not None, "w-late never probed mastra again"
    assert rose < 15, rose


async def test_a_message_it_does_not_understand_means_polling_never_a_stop(
    watch_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Subscribed, the server sends a message of a type the client does not know: the client
    logs it once, falls back to polling (`sidecar_store_subscribed 0`, one line why), and the
    daemon goes on probing and serving; a drain then acts at the next sync (1 s here)."""
    extra = {"SIDECAR_STORE_INTERVAL": "1"}
    async with daemon(
        watch_convex.url, "w-odd", mastra_local.url, tmp_path / "o.log", **extra
    ) as proc:
        await until_metric(proc.url, SUBSCRIBED, 1.0, within=10)
        runs = series(await metrics_text(proc.url), "sidecar_check_runs_total")
        await convex.sync_fault(watch_convex.url, "send", {"message": {"type": "NoSuchMessage"}})
        await until_metric(proc.url, SUBSCRIBED, 0.0, within=5)
        await asyncio.sleep(2.5)
        text = await metrics_text(proc.url)
        ready = (await get(proc.url + "/ready"))[0]
        args = ("drain", "--instance", "w-odd", "--reason", "odd", "--timeout", "8s")
        drained = await asyncio.to_thread(cli, watch_convex.url, *args)
        took = await wait_for(proc.url + "/ready", 503, within=5)
        logs = log_lines(proc)
    assert ready == 200
    assert series(text, "sidecar_check_runs_total") > runs
    assert f"{SUBSCRIBED} 0.0" in text
    odd = [line for line in logs if line["message"].startswith("subscription message not")]
    assert len(odd) == 1, odd
    assert "NoSuchMessage" in odd[0]["what"]
    polling = [line for line in logs if line["message"] == "subscription unavailable: polling"]
    assert len(polling) == 1, polling
    assert drained.returncode == 0, drained
    assert took < 5
