"""HTTP endpoints. Handlers only read the current Snapshot: no I/O, no checks inline."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from concurrent.futures import ThreadPoolExecutor

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from sidecar.monitor import Monitor
from sidecar.peers import Network, client_address
from sidecar.probes.common import read_at_most
from sidecar.snapshot import dumps
from sidecar.witness import HEADER, MAX_BODY, Desk, Refused, answer
from sidecar.witness import PATH as WITNESS_PATH

MONITOR = web.AppKey("monitor", Monitor)
TOKEN = web.AppKey("details_token", str)
PROXIES: web.AppKey[tuple[Network, ...]] = web.AppKey("trusted_proxies")
REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
RENDER = web.AppKey("metrics_render", ThreadPoolExecutor)
WITNESS = web.AppKey("witness", Desk)
WITNESS_READ_TIMEOUT = 2.0  # seconds a question's body may take to arrive
JSON = "application/json"
HEALTH_JSON = "application/health+json"
NO_STORE = "no-store"
# A flag's values, exactly as docs/endpoints.md lists them (no other spelling, no case folding).
TRUE_VALUES = ("", "1", "true")
FALSE_VALUES = ("0", "false")
FLAG_VALUES = "1, true or no value to turn it on, 0 or false to turn it off"
LIVE_OK = dumps({"live": True})
LIVE_STUCK = dumps({"live": False, "reasons": ["scheduler heartbeat is stale"]})
# Every response carries `Cache-Control: no-store`, set where the response is made: an
# `on_response_prepare` signal would cost a coroutine per request (~10% of /ready's
# throughput, bench/throughput.py). Response() copies these, so sharing them is safe.
NO_STORE_HEADERS = CIMultiDict({"Cache-Control": NO_STORE})
_HEADERS = {
    kind: CIMultiDict({"Content-Type": kind, "Cache-Control": NO_STORE})
    for kind in (JSON, HEALTH_JSON)
}
METHODS = ("GET", "HEAD")


def _json(body: bytes, ok: bool, content_type: str = JSON) -> web.Response:
    return web.Response(body=body, status=200 if ok else 503, headers=_HEADERS[content_type])


async def live(request: web.Request) -> web.Response:
    """200 while the scheduler heartbeat is fresh; never depends on a dependency."""
    ok = request.app[MONITOR].live()
    return _json(LIVE_OK if ok else LIVE_STUCK, ok)


async def ready(request: web.Request) -> web.Response:
    """200 when every critical check passes and the daemon is not draining."""
    snap = request.app[MONITOR].snapshot
    return _json(snap.ready_body, snap.ready)


async def health(request: web.Request) -> web.Response:
    """The seed's `/health` JSON; details with `?verbose` (loopback or token)."""
    snap = request.app[MONITOR].snapshot
    verbose = _flag(request, "verbose")
    if verbose and not _may_see_details(request):
        raise web.HTTPForbidden(
            text='{"error":"details need a loopback caller or the details token"}',
            content_type=JSON,
            headers=NO_STORE_HEADERS,
        )
    if HEALTH_JSON in request.headers.get("Accept", ""):
        doc = snap.health_json_document(details=verbose)
        return _json(dumps(doc), snap.health_ok, HEALTH_JSON)
    if verbose:
        return _json(dumps(snap.health_document(details=True)), snap.health_ok)
    return _json(snap.health_body, snap.health_ok)


def _flag(request: web.Request, name: str) -> bool:
    values = request.query.getall(name, [])
    if not values:
        return False
    value = values[-1]
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise web.HTTPBadRequest(
        text=dumps({"error": f"{name} takes {FLAG_VALUES}"}).decode(),
        content_type=JSON,
        headers=NO_STORE_HEADERS,
    )


def _may_see_details(request: web.Request) -> bool:
    token = request.app[TOKEN]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip()
        if (
            scheme.lower() == "bearer"
            and given
            and hmac.compare_digest(given.encode(), token.encode())
        ):
            return True
    return _is_loopback(client_address(request.remote, request.headers, request.app[PROXIES]))


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


async def metrics(request: web.Request) -> web.Response:
    """`/metrics`, encoded as prometheus-client chooses from `Accept` (OpenMetrics when asked)
    and rendered on the app's render thread: with hundreds of checks a render takes tens of
    milliseconds, which the event loop serving `/ready` must never wait for."""
    encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    names = request.query.getall("name[]", [])
    registry = request.app[REGISTRY]
    source = registry.restricted_registry(names) if names else registry
    render = request.app[RENDER]
    body = await asyncio.get_running_loop().run_in_executor(render, encoder, source)
    response = web.Response(
        body=body, headers={"Content-Type": content_type, "Cache-Control": NO_STORE}
    )
    response.enable_compression()
    return response


async def witness(request: web.Request) -> web.Response:
    """A peer's signed question while Convex is down (docs/endpoints.md): refused before any
    work unless admitted; answered at once from the Snapshot, statuses only; each check asked
    is hurried (probed soon) here."""
    desk = request.app[WITNESS]
    try:
        desk.door.within_rate(request.remote)
        if (request.content_length or 0) > MAX_BODY:
            raise Refused(413, f"a question is at most {MAX_BODY} bytes")
        try:
            async with asyncio.timeout(WITNESS_READ_TIMEOUT):
                body, more = await read_at_most(request.content, MAX_BODY)
        except TimeoutError:
            raise Refused(408, "the question's body came too slowly") from None
        if more:
            raise Refused(413, f"a question is at most {MAX_BODY} bytes")
        asked = desk.door.verify(signed=request.headers.get(HEADER), body=body)
    except Refused as refused:
        if refused.status == 429 and desk.held < desk.max_held:
            desk.held += 1
            try:
                await asyncio.sleep(desk.tarpit)
            finally:
                desk.held -= 1
        return _refusal(refused.status, refused.reason)
    snap = request.app[MONITOR].snapshot
    for name in asked.checks:
        if name in snap.statuses:
            desk.hurry(name)
    return _json(dumps(answer(snap, asked)), True)


def _refusal(status: int, reason: str) -> web.Response:
    return web.Response(body=dumps({"error": reason}), status=status, headers=_HEADERS[JSON])


async def _post_only(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMethodNotAllowed(request.method, ("POST",), headers=NO_STORE_HEADERS)


async def _start_render(app: web.Application) -> None:
    app[RENDER].submit(lambda: None).result()  # its thread exists from the start, not mid-life


async def _stop_render(app: web.Application) -> None:
    app[RENDER].shutdown(wait=True, cancel_futures=True)


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMethodNotAllowed(request.method, METHODS, headers=NO_STORE_HEADERS)


async def _not_found(_: web.Request) -> web.StreamResponse:
    raise web.HTTPNotFound(headers=NO_STORE_HEADERS)


def create_app(
    monitor: Monitor,
    *,
    registry: CollectorRegistry,
    details_token: str = "",
    trusted_proxies: tuple[Network, ...] = (),
    witness_desk: Desk | None = None,
) -> web.Application:
    """The endpoints of DESIGN.md with their aliases, `/metrics` serving `registry`; GET and
    HEAD only (405 otherwise); with a `witness_desk`, POST /_sidecar/witness too."""
    app = web.Application(handler_args={"max_field_size": 8190, "max_line_size": 8190})
    app[MONITOR] = monitor
    app[TOKEN] = details_token
    app[PROXIES] = trusted_proxies
    app[REGISTRY] = registry
    app[RENDER] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
    app.on_startup.append(_start_render)
    app.on_cleanup.append(_stop_render)
    routes: dict[Handler, tuple[str, ...]] = {
        live: ("/live", "/livez"),
        ready: ("/ready", "/readyz", "/api/ready"),
        health: ("/health", "/healthz", "/api/health"),
        metrics: ("/metrics",),
    }
    for handler, paths in routes.items():
        for path in paths:
            resource = app.router.add_resource(path)
            resource.add_route("GET", handler)
            resource.add_route("HEAD", handler)
            resource.add_route("*", _method_not_allowed)
    if witness_desk is not None:
        app[WITNESS] = witness_desk
        resource = app.router.add_resource(WITNESS_PATH)
        resource.add_route("POST", witness)
        resource.add_route("*", _post_only)
    # Unknown paths: aiohttp's own 404, with the header every answer carries.
    app.router.add_route("*", "/{tail:.*}", _not_found)
    return app
