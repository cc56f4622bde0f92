"""The daemon's lifecycle: listen, run, drain on SIGTERM, exit 0; a second signal exits at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Sequence

import uvloop
from aiohttp import web

from sidecar import logs
from sidecar.app import FORCED, build_app
from sidecar.config import Settings
from sidecar.server import MONITOR

GIL_SWITCH_SECONDS = 0.0005


def run(settings: Settings, *, early_signals: Sequence[int] = ()) -> int:
    """Serve on uvloop until a signal (`early_signals`: those received before it could
    listen); returns the exit status."""
    # /metrics renders on its own thread; while it does, the event loop gets the GIL back
    # within 0.5 ms instead of Python's default 5 ms (one thread alone never switches).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(settings, early_signals=early_signals))


KEEPALIVE_TIMEOUT = 10.0


async def serve(settings: Settings, *, early_signals: Sequence[int] = ()) -> int:
    """Run until a signal; returns the exit status."""
    log = logs.get("daemon")
    started = time.monotonic()
    app = build_app(settings)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=1.0,
        # aiohttp has no header-read timeout: this bounds how long a connection that never
        # completes a request (a slowloris) or sits idle may hold a file descriptor.
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", host=settings.host, port=settings.port, error=exc.strerror)
        await runner.cleanup()
        return 1
    # What start-up built lives until exit: frozen, no collection walks it again (shorter
    # pauses while serving); then the collector runs as usual (main() turned it off).
    gc.freeze()
    gc.enable()
    log.info(
        "listening",
        host=settings.host,
        port=settings.port,
        checks=[c.name for c in settings.resolved_checks],
        duration=round((time.monotonic() - started) * 1000, 1),
    )
    stop, force = asyncio.Event(), app[FORCED]

    def on_signal(signum: int) -> None:
        # The flags first: nothing after them (a log line, the Monitor) can keep the drain
        # or the exit from happening.
        if stop.is_set():
            force.set()
            log.warning("second signal: exiting now", signal=signal.Signals(signum).name)
            return
        stop.set()
        app[MONITOR].drain()
        log.info(
            "draining",
            signal=signal.Signals(signum).name,
            drain_seconds=settings.drain_seconds,
        )

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    for early in early_signals:
        on_signal(early)
    try:
        await stop.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(force.wait(), timeout=settings.drain_seconds)
    finally:
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return 0
