"""Containers on one machine: each gets its own loopback address (127.0.0.2, 127.0.0.3...).

A load balancer's `health_port` reaches "the sidecar beside this upstream" by swapping the
port of the upstream's address, so an app and its sidecar must share an address and every
container must use the same two ports. `AppServer` is a stand-in app container and
`tests.support.daemon.start_daemon(host=...)` runs the real daemon on such an address.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading

from aiohttp import web

from tests.support import procs


def bindable(host: str) -> bool:
    """Whether a TCP socket can bind `host` (127.0.0.2 is on Linux; macOS needs an alias)."""
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def free_port_on(*hosts: str, attempts: int = 50) -> int:
    """A TCP port that was free on every one of `hosts` a moment ago."""
    for _ in range(attempts):
        port = procs.free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


class AppServer:
    """A stand-in app container on host:port, run by its own thread and event loop, so that
    whatever blocks the test's loop (starting subprocesses) never stalls it.

    `GET /api/health` answers 200 while `healthy` is true, else 500 (the app still serves
    everything else). Any other request is answered 200 with the app's name as the body,
    after `delay` seconds (a request that takes time, so some are in flight at any moment).
    `kill()` stops it the way a dying process does: the listener closes and every open
    connection is aborted, requests in flight included.
    """

    def __init__(self, name: str, host: str, port: int, *, delay: float = 0.0) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.delay = delay
        self.healthy = True
        self.served = 0
        self.in_flight: collections.Counter[str] = collections.Counter()  # by method
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"app {name}", daemon=True)
        self._up = threading.Event()
        self._error: BaseException | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> AppServer:
        """Listen, or raise what prevented it."""
        self._thread.start()
        if not self._up.wait(10):
            raise TimeoutError(f"app {self.name} did not start")
        if self._error is not None:
            raise self._error
        return self

    def kill(self) -> None:
        """Stop at once (listener and every connection); safe to call twice."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._abort(), self._loop)
        future.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/api/health":
            return web.Response(status=200 if self.healthy else 500, text=self.name)
        self.in_flight[request.method] += 1
        try:
            await request.read()
            if self.delay:
                await asyncio.sleep(self.delay)
            self.served += 1
            return web.Response(text=self.name)
        finally:
            self.in_flight[request.method] -= 1

    async def _open(self) -> None:
        self._server = web.Server(self._handle, access_log=None)
        self._listener = await self._loop.create_server(
            self._server, self.host, self.port, reuse_address=True
        )

    async def _abort(self) -> None:
        assert self._server is not None
        assert self._listener is not None
        self._listener.close()
        # A connection accepted just before the close gets its handler one loop iteration
        # later: abort again after letting those run.
        for _ in range(3):
            for handler in list(self._server.connections):
                if handler.transport is not None:
                    handler.transport.abort()
            await asyncio.sleep(0)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._open())
        except BaseException as exc:
            self._error = exc
            self._up.set()
            self._loop.close()
            return
        self._up.set()
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()
