"""The peers the sidecar is measured against, and the helpers the benchmarks point it at.

    python bench/servers.py MODE --port N [--loop uvloop|asyncio] [options]

Modes:
  dep       a dependency that answers every request after `--delay` (20 ms): /health
            (Mastra's `{"success":true}`) and / (a Convex deployment's root text, what the
            status quo fetches). The daemon's own Convex is dev/convex-local, which runs the
            store's functions (bench/common.py)
  bare      a bare aiohttp handler answering `--ready-body` on /ready and `--health-body` on
            /health: the same bytes the sidecar serves, nothing else (the stack's ceiling)
  probe     the scaling guide's `/api/health` route: every request fetches Convex
            (`--convex`) and then Mastra's /health (`--mastra`) (the status quo)
  recorder  answers 200 at once and records when each request arrived (monotonic clock,
            which is system-wide on Linux); GET /_times returns them as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dep_app(delay: float) -> web.Application:
    """Mastra's /health and a Convex deployment's root, each answered `delay` seconds late."""
    mastra = b'{"success":true}'

    def slow(body: bytes) -> Handler:
        async def handler(_: web.Request) -> web.Response:
            await asyncio.sleep(delay)
            return web.Response(body=body, content_type=JSON)

        return handler

    app = web.Application()
    app.router.add_get("/health", slow(mastra))
    app.router.add_get("/", slow(b"This Convex deployment is running."))
    return app


def bare_app(ready_body: bytes, health_body: bytes) -> web.Application:
    """The ceiling: a handler that returns the given bytes and does nothing else."""

    async def ready(_: web.Request) -> web.Response:
        return web.Response(body=ready_body, content_type=JSON)

    async def health(_: web.Request) -> web.Response:
        return web.Response(body=health_body, content_type=JSON)

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/health", health)
    return app


SESSION = web.AppKey("session", aiohttp.ClientSession)


def probe_app(convex: str, mastra: str) -> web.Application:
    """The scaling guide's route: fetch Convex, then Mastra, on every request."""

    async def check(session: aiohttp.ClientSession, url: str) -> str:
        try:
            async with session.get(url) as resp:
                await resp.read()
                return "ok" if resp.ok else "error"
        except (aiohttp.ClientError, TimeoutError):
            return "error"

    async def health(request: web.Request) -> web.Response:
        session = request.app[SESSION]
        services = {
            "convex": await check(session, convex),
            "mastra": await check(session, f"{mastra}/health"),
        }
        doc = {
            "status": "ok",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "services": services,
        }
        healthy = all(v == "ok" for v in services.values())
        return web.json_response(doc, status=200 if healthy else 503)

    async def ready(request: web.Request) -> web.Response:
        session = request.app[SESSION]
        ok = (
            await check(session, convex) == "ok"
            and await check(session, f"{mastra}/health") == "ok"
        )
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def session_ctx(app: web.Application) -> object:
        # Keep-alive pooled connections, as Node's fetch keeps them: the generous reading.
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=5),
        )
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)  # type: ignore[arg-type]
    app.router.add_get("/health", health)
    app.router.add_get("/api/health", health)
    app.router.add_get("/ready", ready)
    return app


def recorder_app() -> web.Application:
    """Answers 200 at once; remembers when each request arrived."""
    arrivals: list[float] = []

    async def hit(_: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.Response(body=b"{}", content_type=JSON)

    async def times(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    app = web.Application()
    app.router.add_get("/_times", times)
    app.router.add_get("/{tail:.*}", hit)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("dep", "bare", "probe", "recorder"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--delay", type=float, default=0.020)
    parser.add_argument("--ready-body", default='{"ready":true}')
    parser.add_argument("--health-body", default='{"status":"ok"}')
    parser.add_argument("--convex", default="")
    parser.add_argument("--mastra", default="")
    args = parser.parse_args()
    if args.mode == "dep":
        app = dep_app(args.delay)
    elif args.mode == "bare":
        app = bare_app(args.ready_body.encode(), args.health_body.encode())
    elif args.mode == "probe":
        app = probe_app(args.convex, args.mastra)
    else:
        app = recorder_app()
    loop_factory = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, args.port))


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
