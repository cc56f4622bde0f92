"""Wires settings into a running application: Monitor, endpoints, scheduler and store reporter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from sidecar import __version__, logs
from sidecar.config import Settings
from sidecar.monitor import Monitor
from sidecar.reporter import Reporter
from sidecar.scheduler import Scheduler
from sidecar.server import create_app
from sidecar.store import ConvexClient, HealthStore


def build_app(settings: Settings) -> web.Application:
    """The aiohttp app; its cleanup context runs the scheduler and the reporter."""
    checks = settings.resolved_checks()
    monitor = Monitor(instance=settings.instance, version=__version__, checks=checks)
    token = settings.details_token.get_secret_value() if settings.details_token else ""
    app = create_app(monitor, details_token=token)

    async def background(app: web.Application) -> AsyncIterator[None]:
        probe_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            # Uncompressed answers: the 64 KiB read bound then bounds memory too.
            headers={"User-Agent": f"health-sidecar/{__version__}", "Accept-Encoding": "identity"},
        )
        store_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=10),
            headers={"User-Agent": f"health-sidecar/{__version__}"},
        )
        store = HealthStore(
            ConvexClient(store_session, url=settings.convex_url, timeout=settings.store_timeout),
            secret=settings.secret.get_secret_value(),
            instance=settings.instance,
            ttl_seconds=settings.store_ttl,
        )
        period = min((c.every for c in checks), default=settings.interval)
        reporter = Reporter(monitor=monitor, store=store, period=period)
        scheduler = Scheduler(monitor=monitor, session=probe_session, checks=checks)
        tasks = [
            _task(scheduler.run(), "scheduler"),
            _task(reporter.warm_start(), "warm-start"),
            _task(reporter.run(), "reporter"),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await probe_session.close()
        await store_session.close()

    app.cleanup_ctx.append(background)
    return app


def _task(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """A background task whose unexpected end is logged, never silent."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_end)
    return task


def _report_end(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        logs.get("daemon").error("background task died", task=task.get_name(), exc_info=error)
