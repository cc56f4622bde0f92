"""The endpoints serve the Snapshot: status codes, bodies, aliases, methods, details."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from unittest import mock
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sidecar.checks import Check, ConvexCheck, HttpCheck, MastraCheck
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.peers import parse_networks
from sidecar.result import CheckResult, Verdict
from sidecar.server import REGISTRY, create_app, health
from sidecar.snapshot import StoreState
from tests.support.procs import ROOT

ENDPOINTS = ROOT / "docs" / "endpoints.md"
TOKEN = "details-token-0123456789"
ClientFactory = Callable[[web.Application], Coroutine[Any, Any, TestClient[Any, Any]]]


def make_app(*, app_critical: bool = True, **options: Any) -> tuple[Monitor, web.Application]:
    checks: list[Check] = [
        ConvexCheck(name="convex", target="http://127.0.0.1:1", interval=10, timeout=2),
        MastraCheck(name="mastra", target="http://127.0.0.1:2", interval=10, timeout=2),
        HttpCheck(
            name="app",
            target="http://127.0.0.1:3",
            interval=10,
            timeout=2,
            critical=app_critical,
            failures_before_fail=1,
        ),
    ]
    metrics = Metrics(checks=[c.name for c in checks], version="0.0.0")
    monitor = Monitor(instance="test-1", version="0.0.0", checks=checks, metrics=metrics)
    return monitor, create_app(monitor, registry=metrics.registry, **options)


def feed(monitor: Monitor, **statuses: Verdict) -> None:
    for name, status in statuses.items():
        monitor.record(
            name,
            CheckResult(
                status=status, output=f"{name} {status}", latency=0.012, observed_at=time.time()
            ),
        )


@pytest.fixture
async def served(aiohttp_client: ClientFactory) -> tuple[Monitor, TestClient[Any, Any]]:
    monitor, app = make_app(details_token=TOKEN)
    return monitor, await aiohttp_client(app)


async def get_json(client: TestClient[Any, Any], path: str, **kw: Any) -> tuple[int, Any]:
    resp = await client.get(path, **kw)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status, json.loads(await resp.read())


async def test_before_first_round_not_ready(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """No result yet: live, not ready (every check unknown), health 200 but not ok."""
    _, client = served
    assert (await client.get("/live")).status == 200
    status, body = await get_json(client, "/ready")
    assert status == 503
    assert body["ready"] is False
    assert "convex is unknown" in body["reasons"]
    status, body = await get_json(client, "/health")
    assert status == 200
    assert body["services"]["convex"] == "unknown"


async def test_all_pass_ready_and_seed_shape(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """Every check passes: /ready 200 {"ready": true}, /health in the seed's exact shape."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    assert await get_json(client, "/ready") == (200, {"ready": True})
    status, body = await get_json(client, "/health")
    assert status == 200
    assert set(body) == {"status", "timestamp", "services"}
    assert body["status"] == "ok"
    assert body["timestamp"].endswith("Z")
    assert body["services"] == {"convex": "ok", "mastra": "ok", "app": "ok", "store": "ok"}


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/live", "live"),
        ("/livez", "live"),
        ("/ready", "ready"),
        ("/readyz", "ready"),
        ("/api/ready", "ready"),
        ("/health", "health"),
        ("/healthz", "health"),
        ("/api/health", "health"),
    ],
)
async def test_aliases(served: tuple[Monitor, TestClient[Any, Any]], path: str, kind: str) -> None:
    """Every alias answers like its endpoint."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="fail", app="pass")
    expected = {"live": 200, "ready": 503, "health": 503}[kind]
    assert (await client.get(path)).status == expected


async def test_critical_failure(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """Mastra fails: /health 503 "error" with services.mastra "error"; /ready 503; /live 200."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="fail", app="pass")
    status, body = await get_json(client, "/health")
    assert (status, body["status"], body["services"]["mastra"]) == (503, "error", "error")
    status, body = await get_json(client, "/ready")
    assert status == 503
    assert body == {"ready": False, "reasons": ["mastra is fail"]}
    assert (await client.get("/live")).status == 200


async def test_noncritical_failure_is_degraded(aiohttp_client: ClientFactory) -> None:
    """A non-critical check fails: /health 200 "degraded", still ready."""
    monitor, app = make_app(app_critical=False)
    client = await aiohttp_client(app)
    feed(monitor, convex="pass", mastra="pass", app="fail")
    status, body = await get_json(client, "/health")
    assert (status, body["status"], body["services"]["app"]) == (200, "degraded", "error")
    assert (await client.get("/ready")).status == 200


async def test_store_error_degrades_but_keeps_ready(
    served: tuple[Monitor, TestClient[Any, Any]],
) -> None:
    """The store is non-critical: its failure shows as services.store "error", 200, ready."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    monitor.set_store(StoreState(status="error", kind="unauthorized", message="nope"))
    status, body = await get_json(client, "/health")
    assert (status, body["status"], body["services"]["store"]) == (200, "degraded", "error")
    assert (await client.get("/ready")).status == 200


async def test_store_failure_is_explained_in_health_json_and_metrics(
    served: tuple[Monitor, TestClient[Any, Any]],
) -> None:
    """Every store call failing: health+json says `warn` AND why - a `store` component that
    does not affect service health, and a note - and `sidecar_store_up` is 0; the details
    (the error text) only with `?verbose`. Back to ok: pass, no note, `sidecar_store_up` 1."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    monitor.set_store(StoreState(status="error", kind="unavailable", message="health:sync: 500"))
    accept = {"Accept": "application/health+json"}
    status, body = await get_json(client, "/health", headers=accept)
    [store] = body["checks"]["store"]
    assert (status, body["status"]) == (200, "warn")
    assert store == {
        "componentId": "store",
        "componentType": "datastore",
        "status": "fail",
        "affectsServiceHealth": False,
        "observedValue": "unavailable",
    }
    assert body["notes"] == ["store is failing (unavailable): results are not kept in Convex"]
    _, verbose = await get_json(client, "/health?verbose", headers=accept)
    assert verbose["checks"]["store"][0]["output"] == "health:sync: 500"
    assert "sidecar_store_up 0.0" in await (await client.get("/metrics")).text()
    monitor.set_store(StoreState(status="ok"))
    _, body = await get_json(client, "/health", headers=accept)
    assert (body["status"], body["checks"]["store"][0]["status"]) == ("pass", "pass")
    assert "notes" not in body
    assert "sidecar_store_up 1.0" in await (await client.get("/metrics")).text()


async def test_draining(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """Draining: /ready 503 with reason "draining"; /health and /live unchanged."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    monitor.drain()
    status, body = await get_json(client, "/ready")
    assert (status, body["reasons"]) == (503, ["draining"])
    assert (await client.get("/health")).status == 200
    assert (await client.get("/live")).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_other_methods_405(served: tuple[Monitor, TestClient[Any, Any]], method: str) -> None:
    """Only GET and HEAD."""
    _, client = served
    for path in ("/live", "/ready", "/health", "/metrics"):
        resp = await client.request(method, path)
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]


async def test_head(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """HEAD answers the status without a body."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    resp = await client.head("/ready")
    assert resp.status == 200
    assert await resp.read() == b""


async def test_verbose_from_loopback(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """?verbose from loopback adds per-check details, the flat fields stay."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="fail", app="pass")
    status, body = await get_json(client, "/health?verbose")
    assert status == 503
    assert body["services"]["mastra"] == "error"
    mastra = body["checks"]["mastra"]
    assert mastra["status"] == "fail"
    assert mastra["output"] == "mastra fail"
    assert mastra["consecutive_failures"] == 1
    assert mastra["latency_ms"] == pytest.approx(12.0)


@pytest.mark.parametrize(
    ("value", "details"), [("", True), ("1", True), ("true", True), ("0", False), ("false", False)]
)
async def test_verbose_values(
    served: tuple[Monitor, TestClient[Any, Any]], value: str, details: bool
) -> None:
    """The documented spellings of verbose, on and off."""
    _, client = served
    status, body = await get_json(client, f"/health?verbose={value}")
    assert status != 400
    assert ("checks" in body) == details


@pytest.mark.parametrize("value", ["maybe", "yes", "no", "on", "off", "YES", "True", " 1"])
async def test_verbose_other_values_are_a_400_listing_the_documented_ones(
    served: tuple[Monitor, TestClient[Any, Any]], value: str
) -> None:
    """Any spelling docs/endpoints.md does not list is a 400 whose error lists the ones it
    does, exactly as the page quotes it."""
    _, client = served
    status, body = await get_json(client, f"/health?verbose={quote(value)}")
    assert status == 400
    assert f'{{"error":"{body["error"]}"}}' in " ".join(ENDPOINTS.read_text().split())
    assert body["error"] == (
        "verbose takes 1, true or no value to turn it on, 0 or false to turn it off"
    )


async def test_unknown_query_parameters_are_ignored(
    served: tuple[Monitor, TestClient[Any, Any]],
) -> None:
    """Unknown parameters change nothing."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="pass", app="pass")
    status, body = await get_json(client, "/ready?foo=bar&x")
    assert (status, body) == (200, {"ready": True})


def remote_request(path: str, peer: str, headers: dict[str, str] | None = None) -> web.Request:
    """A request as if from `peer` (the test client itself is always loopback)."""
    monitor, app = make_app(details_token=TOKEN)
    feed(monitor, convex="pass", mastra="pass", app="pass")
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda key, default=None: (
        (peer, 40000) if key == "peername" else default
    )
    return make_mocked_request("GET", path, headers=headers or {}, app=app, transport=transport)


@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
        {"X-Forwarded-For": "127.0.0.1"},
    ],
)
async def test_verbose_through_a_proxy_is_not_loopback(
    aiohttp_client: ClientFactory, forwarded: dict[str, str]
) -> None:
    """A reverse proxy on this host forwards a request: without SIDECAR_TRUSTED_PROXIES the
    sidecar cannot tell who the client is, so the details need the token (the loopback peer
    is the proxy, not the client)."""
    client = await aiohttp_client(make_app(details_token=TOKEN)[1])
    assert (await client.get("/health?verbose", headers=forwarded)).status == 403
    with_token = {**forwarded, "Authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/health?verbose", headers=with_token)).status == 200
    assert (await client.get("/health?verbose")).status == 200  # no proxy: loopback


async def test_verbose_behind_a_trusted_proxy_judges_the_client(
    aiohttp_client: ClientFactory,
) -> None:
    """With the proxy trusted, the client it names is judged: loopback gets the details,
    anyone else needs the token."""
    _, app = make_app(details_token=TOKEN, trusted_proxies=parse_networks("127.0.0.1"))
    client = await aiohttp_client(app)
    local = {"X-Forwarded-For": "127.0.0.1"}
    remote = {"X-Forwarded-For": "203.0.113.9"}
    assert (await client.get("/health?verbose", headers=local)).status == 200
    assert (await client.get("/health?verbose", headers=remote)).status == 403


async def test_verbose_refused_to_remote_without_token() -> None:
    """A caller outside loopback gets no details without the token (403), but the plain
    /health still works."""
    with pytest.raises(web.HTTPForbidden):
        await health(remote_request("/health?verbose", "10.1.2.3"))
    plain = await health(remote_request("/health", "10.1.2.3"))
    assert b"checks" not in plain.body  # type: ignore[operator]


async def test_verbose_to_remote_with_token() -> None:
    """The right bearer token opens details to any caller; a wrong one does not."""
    ok = await health(
        remote_request("/health?verbose", "10.1.2.3", {"Authorization": f"Bearer {TOKEN}"})
    )
    assert b'"checks"' in ok.body  # type: ignore[operator]
    with pytest.raises(web.HTTPForbidden):
        await health(
            remote_request("/health?verbose", "10.1.2.3", {"Authorization": "Bearer wrong"})
        )


async def test_health_json_format(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """Accept: application/health+json gives the IETF format with its content type."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="fail", app="pass")
    resp = await client.get("/health", headers={"Accept": "application/health+json"})
    assert resp.status == 503
    assert resp.content_type == "application/health+json"
    body = json.loads(await resp.read())
    assert body["status"] == "fail"
    assert body["checks"]["mastra:responseTime"][0]["status"] == "fail"
    assert body["checks"]["convex:responseTime"][0]["observedUnit"] == "ms"


async def test_metrics(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """/metrics has the check gauges of the current Snapshot and the counters."""
    monitor, client = served
    feed(monitor, convex="pass", mastra="fail", app="pass")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    text = await resp.text()
    assert 'sidecar_check_up{check="mastra"} 0.0' in text
    assert 'sidecar_check_up{check="convex"} 1.0' in text
    assert 'sidecar_check_status{check="mastra",status="fail"} 1.0' in text
    assert 'sidecar_check_runs_total{check="mastra",result="fail"} 1.0' in text
    assert "sidecar_ready 0.0" in text
    assert 'sidecar_build_info{version="0.0.0"} 1.0' in text


async def test_metrics_render_off_the_event_loop(
    served: tuple[Monitor, TestClient[Any, Any]],
) -> None:
    """A scrape renders on the app's render thread, never on the event loop's: a large
    registry (hundreds of checks) must not stall `/ready` for the render's tens of ms."""
    _, client = served
    seen: list[str] = []

    class Witness(Collector):
        def collect(self) -> Iterable[Metric]:
            seen.append(threading.current_thread().name)
            return []

    assert client.app is not None
    client.app[REGISTRY].register(Witness())
    seen.clear()  # registering collected once, to describe it
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/metrics", headers={"Accept-Encoding": "gzip"})).status == 200
    assert len(seen) == 2
    assert all(name.startswith("metrics") for name in seen), seen
    assert threading.current_thread().name not in seen


async def test_metrics_openmetrics(served: tuple[Monitor, TestClient[Any, Any]]) -> None:
    """Prometheus' OpenMetrics-first Accept header gets OpenMetrics."""
    _, client = served
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    resp = await client.get("/metrics", headers={"Accept": accept})
    assert resp.content_type == "application/openmetrics-text"
    assert (await resp.text()).endswith("# EOF\n")


async def test_metrics_series_exist_from_the_start(
    served: tuple[Monitor, TestClient[Any, Any]],
) -> None:
    """Before any probe: transitions are at 0 for every status (so the first one counts in
    rate()), each check has an info series with its kind and criticality, and there are no
    `_created` series."""
    _, client = served
    text = await (await client.get("/metrics")).text()
    assert 'sidecar_check_transitions_total{check="app",to="fail"} 0.0' in text
    assert 'sidecar_check_info{check="mastra",critical="true",kind="mastra"} 1.0' in text
    assert "_created" not in text
