"""Wires settings into a running application: Monitor, endpoints, scheduler and store sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

from sidecar import __version__, logs
from sidecar.config import Settings
from sidecar.fleet import FleetView
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.probes import runner
from sidecar.scheduler import Scheduler
from sidecar.server import create_app
from sidecar.store import ConvexClient, HealthStore
from sidecar.store.evidence import RuntimeEvidence
from sidecar.store.signing import fingerprint
from sidecar.sync import Syncer, SyncTiming
from sidecar.warmstart import WarmStart
from sidecar.watch import Watch
from sidecar.witness import Desk, Door
from sidecar.witnesses import Witnesses

# Set by a second signal: exit at once, without the last sync.
FORCED = web.AppKey("forced", asyncio.Event)


def build_app(settings: Settings) -> web.Application:
    """The aiohttp app; its cleanup context runs the scheduler and the store sync."""
    checks = settings.resolved_checks
    timing = SyncTiming(period=settings.store_interval, timeout=settings.store_timeout)
    metrics = Metrics(
        checks=[c.name for c in checks], version=__version__, dropped_lines=logs.dropped
    )
    monitor = Monitor(
        instance=settings.instance,
        version=__version__,
        checks=checks,
        metrics=metrics,
        fleet=FleetView(threshold=settings.panic_threshold, grace=timing.grace),
    )
    token = settings.details_token.get_secret_value() if settings.details_token else ""
    secret = settings.secret.get_secret_value()
    desk = Desk(Door(secret))
    app = create_app(
        monitor,
        registry=metrics.registry,
        details_token=token,
        trusted_proxies=settings.trusted_proxies,
        witness_desk=desk,
    )
    app[FORCED] = asyncio.Event()

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
        witness_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=10),
            headers={"User-Agent": f"health-sidecar/{__version__}"},
        )
        store = HealthStore(
            ConvexClient(store_session, url=settings.convex_url, timeout=settings.store_timeout),
            secret=secret,
            instance=settings.instance,
            version=__version__,
            ttl_seconds=settings.ttl,
            period_seconds=settings.store_interval,
        )
        evidence = RuntimeEvidence(
            url=settings.convex_url,
            window=2 * settings.store_interval + settings.store_timeout,
        )
        fingerprints = {c.name: fingerprint(secret, c.definition()) for c in checks}
        scheduler = Scheduler(
            monitor=monitor,
            metrics=metrics,
            session=probe_session,
            checks=checks,
            probe=runner(evidence),
        )
        # The fleet's facts as they change (polling by the sync when the socket is not there).
        watch = Watch(
            monitor=monitor,
            session=store_session,
            url=settings.convex_url,
            instance=settings.instance,
            hurry=scheduler.hurry,
        )
        syncer = Syncer(
            monitor=monitor,
            store=store,
            metrics=metrics,
            evidence=evidence,
            fingerprints=fingerprints,
            timing=timing,
            threshold=settings.panic_threshold,
            warm_start=WarmStart(monitor=monitor, fingerprints=fingerprints),
            on_answer=watch.answered,
            advertise=settings.advertise,
        )
        desk.hurry = scheduler.hurry  # a peer's question: probe the check soon (fast interval)
        witnesses = Witnesses(
            monitor=monitor,
            session=witness_session,
            secret=secret,
            instance=settings.instance,
            hurry=scheduler.hurry,
        )
        tasks = [
            _task(scheduler.run(), "scheduler"),
            _task(syncer.run(), "sync"),
            _task(watch.run(), "watch"),
            _task(witnesses.run(), "witnesses"),
        ]
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not app[FORCED].is_set():
            # The last sync confirms the results as of now (a restart soon after warm-starts)
            # and takes this instance out of the fleet's counts.
            await syncer.sync_once(leaving=True)
        await probe_session.close()
        await store_session.close()
        await witness_session.close()

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
