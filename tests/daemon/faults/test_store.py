"""Store faults (the Convex HTTP API the results are kept in): a wrong secret, a clock two
minutes off, a function error (the real functions refusing the payload), Convex's argument
validator, Convex answering 5xx, and Convex hanging. Probing and serving go on,
`services.store` says "error" (200, degraded: the store is not critical), `sidecar_store_up`
is 0, `sidecar_store_requests_total` counts the failure under its result label, one log line
marks the change and one the recovery, and readiness never moves.

CONVEX_URL is a switchable proxy in front of dev/convex-local; faults apply to `/api/mutation`
(`health:sync`). The built-in convex check probes dev/convex-local directly here, so it is
"another deployment" and keeps passing. The refusals are produced by dev/convex-local's real
functions and validators: the proxy only rewrites the forwarded call and, where the fault is
not the signature itself, signs it again with the secret, as a sidecar would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from sidecar.store.signing import signature
from tests.support import faults, procs
from tests.support.daemon import wait_for
from tests.support.matrix import (
    FD_TRANSIENT,
    RESULTS,
    RSS_GROWTH_LIMIT,
    SLACK,
    STORE_BUDGET,
    STORE_PERIOD,
    STORE_TIMEOUT,
    TIMEOUT,
    Cell,
    CellResult,
    Group,
    assert_fast,
    assert_whole_life,
    check_config,
    connections_to,
    daemon_env,
    endpoint_latency,
    get_json,
    log_lines,
    metrics,
    proc_stats,
    running_group,
    runs,
    store_requests,
    verbose_health,
    wait_metric,
    wait_state,
    wait_store,
    wall,
)
from tests.support.procs import SECRET
from tests.support.switch import Forward, SwitchServer, switch_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

WRONG_SECRET = "wrong-secret-0123456789"
CONVEX_503 = (
    b'{"code":"InternalServerError","message":"Your request couldn\'t be completed. '
    b'Try again later."}'
)


def _signed(secret: str = SECRET, *, skew_ms: int = 0, **payload: Any) -> Forward:
    """Forward `health:sync` with its payload changed and/or its timestamp moved, signed again
    with `secret` (the refusal is then the functions' own, not a broken signature)."""

    def rewrite(request: dict[str, Any]) -> dict[str, Any]:
        args = dict(request["args"])
        body = json.dumps({**json.loads(args["body"]), **payload}, separators=(",", ":"))
        ts = int(args["ts"]) + skew_ms
        sig = signature(secret, path=request["path"], instance=args["instance"], ts=ts, body=body)
        return {**request, "args": {**args, "ts": ts, "body": body, "sig": sig}}

    return Forward(rewrite)


def _args(**changes: Any) -> Forward:
    """Forward `health:sync` with some of its arguments replaced (the signature stays)."""

    def rewrite(request: dict[str, Any]) -> dict[str, Any]:
        return {**request, "args": {**request["args"], **changes}}

    return Forward(rewrite)


@dataclass(frozen=True)
class StoreFault:
    name: str
    route: Any  # a faults.Behaviour, or a Forward that rewrites the call
    result: str  # the sidecar_store_requests_total result label
    output: str  # a text the store's detail output must contain


STORE_FAULTS = [
    StoreFault("wrong_secret", _signed(WRONG_SECRET), "unauthorized", "bad signature"),
    StoreFault("clock_skew", _signed(skew_ms=120_000), "clock_skew", "clock"),
    # health:sync's own check: a ConvexError with errorData {"code": "invalid_argument"}.
    StoreFault("invalid_argument", _signed(ttlMs=0), "function_error", "invalid_argument"),
    # Convex's argument validator: a production deployment says only "Server Error".
    StoreFault("validator", _args(ts="soon"), "function_error", "Server Error"),
    StoreFault("convex_503", faults.respond(503, CONVEX_503), "unavailable", "HTTP 503"),
    StoreFault("hang", faults.hang(), "unavailable", f"no answer within {STORE_TIMEOUT:g}s"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(switch_server(upstream=convex_local.url))
        app = await stack.enter_async_context(switch_server(faults.respond(200, b"{}")))
        checks = [
            check_config("convex", "convex", convex_local.url),
            check_config("app", "http", app.url + "/api/health"),
        ]
        env = daemon_env(store.url, "faults-store", checks)
        log = tmp_path_factory.mktemp("faults-store") / "daemon.log"
        targets: dict[str, SwitchServer] = {"convex": store, "app": app}
        async with running_group(env, log, targets, store=store) as running:
            yield running


@pytest.mark.parametrize("fault", STORE_FAULTS, ids=lambda f: f.name)
async def test_store_fault(group: Group, fault: StoreFault) -> None:
    """The store API fails at runtime: within one store period + the store timeout
    `services.store` is "error" (/health 200 "degraded"), /ready stays 200 and every endpoint
    fast (p99 < P99_LIMIT), the checks keep running and passing, the failure is counted under its
    result label, one "store failing" line is logged however many calls fail, and one
    "store recovered" line when the fault clears."""
    assert group.store is not None
    cell = Cell("store", fault.name, "pass", "the store is not critical")
    result = CellResult(cell)
    RESULTS.append(result)
    await wait_store(group, "ok", within=STORE_BUDGET + SLACK + 2)
    before = await metrics(group)
    lines_before = len(log_lines(group))
    rss0, fds0 = proc_stats(group.pid)

    group.store.inject(fault.route, paths=("/api/mutation",))
    latency = asyncio.create_task(endpoint_latency(group))
    try:
        result.to_state = await wait_store(group, "error", within=STORE_BUDGET + SLACK + 2)
        health_status, health = await get_json(group, "/health")
        ready_status, ready = await get_json(group, "/ready")
        _, details = await verbose_health(group)
        # Several failing calls (and probe rounds) under the fault: still one log line.
        failed0 = before[store_requests(fault.result)]
        await wait_metric(
            group, store_requests(fault.result), failed0 + 3, within=3 * STORE_BUDGET + SLACK + 2
        )
        latencies = await latency
        during = await metrics(group)
    finally:
        group.store.clear()
        if not latency.done():
            latency.cancel()
            with contextlib.suppress(BaseException):
                await latency
    result.to_recover = await wait_store(group, "ok", within=STORE_BUDGET + SLACK + 2)
    after = await metrics(group)
    rss1, fds1 = proc_stats(group.pid)
    lines = log_lines(group)[lines_before:]
    result.state = "ok" if health["status"] != "error" else "error"
    result.output = details["store"]["output"]
    result.store = f"{details['store']['error']}; health {health_status} {health['status']}"
    result.p99 = {path: lat.p99 for path, lat in latencies.items()}
    result.worst = max(lat.worst for lat in latencies.values())
    result.rss_growth, result.fd_growth = rss1 - rss0, fds1 - fds0

    assert result.to_state <= STORE_BUDGET + SLACK, f"store error after {result.to_state:.2f}s"
    assert result.to_recover <= STORE_BUDGET + SLACK, f"recovered after {result.to_recover:.2f}s"
    assert (health_status, health["status"], health["services"]["store"]) == (
        200,
        "degraded",
        "error",
    ), health
    assert health["services"]["convex"] == health["services"]["app"] == "ok", health
    assert (ready_status, ready) == (200, {"ready": True})
    assert latencies["/ready"].statuses == {200: len(latencies["/ready"].samples)}
    assert latencies["/health"].statuses == {200: len(latencies["/health"].samples)}
    assert_fast(latencies, fault.name)
    assert details["store"]["error"] == fault.result, details["store"]
    assert during["sidecar_store_up"] == 0
    assert after["sidecar_store_up"] == 1
    assert fault.output in details["store"]["output"], details["store"]
    for check in ("convex", "app"):  # probing went on, and nothing flapped
        assert during[runs(check, "pass")] >= before[runs(check, "pass")] + 3, check
        assert during[runs(check, "fail")] == before[runs(check, "fail")], check
    assert [line for line in lines if "check" in line and line["check"] != "store"] == []
    store_lines = [line for line in lines if line.get("component") == "store"]
    assert [(line["message"], line.get("error")) for line in store_lines] == [
        ("store failing", fault.result),
        ("store recovered", None),
    ], store_lines
    assert not any(line["message"] in ("ready", "not ready") for line in lines), lines
    assert after[store_requests("ok")] > during[store_requests("ok")]
    if fault.name == "hang":  # each call gave up after SIDECAR_STORE_TIMEOUT, not before
        calls = (
            after['sidecar_store_request_duration_seconds_count{op="sync"}']
            - before['sidecar_store_request_duration_seconds_count{op="sync"}']
        )
        spent = (
            after['sidecar_store_request_duration_seconds_sum{op="sync"}']
            - before['sidecar_store_request_duration_seconds_sum{op="sync"}']
        )
        hung = after[store_requests("unavailable")] - before[store_requests("unavailable")]
        assert hung >= 3
        assert calls >= hung
        assert STORE_TIMEOUT * hung <= spent + 0.05, (spent, hung)
        assert spent <= STORE_TIMEOUT * hung + 0.2 * calls, (spent, hung, calls)
    assert result.rss_growth < RSS_GROWTH_LIMIT, result.rss_growth
    assert result.fd_growth <= len(group.targets) + FD_TRANSIENT, result.fd_growth
    assert connections_to(group.pid, group.store.port) <= 2


async def test_whole_life(group: Group) -> None:
    """After every store fault: no background task died, no check loop crashed, /live stayed
    200, and no check changed state."""
    await assert_whole_life(group, {"convex": [], "app": []})


async def test_store_hanging_from_start_delays_nothing(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Convex's function API hangs from the start: the first sync (the warm start's) gives up
    after SIDECAR_STORE_TIMEOUT, counted as `op="sync", result="unavailable"`; the daemon is
    ready after its first round anyway, with `services.store` "error" and /health degraded."""
    async with switch_server(upstream=convex_local.url) as store:
        store.inject(faults.hang(), paths=("/api/",))
        checks = [check_config("convex", "convex", convex_local.url)]
        env = daemon_env(store.url, "faults-store-start", checks)
        log = tmp_path_factory.mktemp("faults-store-start") / "daemon.log"
        async with running_group(env, log, {}, store=store, healthy=()) as group:
            await wait_store(group, "error", within=STORE_TIMEOUT + SLACK + 2)
            await wait_state(group, "convex", "pass", within=2)
            page = await metrics(group)
            health_status, health = await get_json(group, "/health")
            ready_status, _ = await get_json(group, "/ready")
            lines = log_lines(group)
    listening = wall(next(line for line in lines if line["message"] == "listening"))
    ready = wall(next(line for line in lines if line["message"] == "ready"))
    failing = wall(next(line for line in lines if line["message"] == "store failing"))
    # Ready with the first round, long before the warm start's read gave up.
    assert ready - listening < TIMEOUT + SLACK, ready - listening
    assert failing - listening >= STORE_TIMEOUT - 0.1, failing - listening
    assert ready < failing
    assert page[store_requests("unavailable")] >= 1
    assert (health_status, health["status"], ready_status) == (200, "degraded", 200)


async def test_first_store_success_is_not_a_recovery(group: Group) -> None:
    """The store's first successful call after the start is not a recovery: nothing failed
    before it, so no "store recovered" line may precede the first "store failing" one (a
    monitor alerting on that message would fire on every start)."""
    lines = log_lines(group)
    first_failure = next(
        (i for i, line in enumerate(lines) if line["message"] == "store failing"), len(lines)
    )
    early = [line for line in lines[:first_failure] if line["message"] == "store recovered"]
    assert early == [], early


async def test_long_non_ascii_output_does_not_poison_the_report(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A check's output is cut to 1,024 characters, and Convex counts characters in UTF-16
    code units: an output with a character outside the BMP (here from a long `body_regex`
    with an emoji) must still fit `health:sync`'s limit, or the whole sync - every
    check's row - is refused and the store stays "error" (function_error, invalid_argument)
    for as long as that output stands."""
    regex = "\N{LARGE GREEN CIRCLE}" + "x" * 1100  # compiles; never matches "{}"
    async with switch_server(faults.respond(200, b"{}")) as app:
        checks = [
            check_config("convex", "convex", convex_local.url),
            check_config("app", "http", app.url, body_regex=regex, critical=False),
        ]
        env = daemon_env(convex_local.url, "faults-store-output", checks)
        log = tmp_path_factory.mktemp("faults-store-output") / "daemon.log"
        async with running_group(env, log, {}, healthy=("convex",)) as group:
            await wait_state(group, "app", "fail", within=2)
            await wait_reports(group, 2, within=2 * STORE_BUDGET + SLACK + 2)
            _, details = await verbose_health(group)
            page = await metrics(group)
    assert details["checks"]["app"]["output"].startswith("body does not match")
    assert page[store_requests("function_error")] == 0, details["store"]
    assert details["store"]["status"] == "ok", details["store"]
    assert page[store_requests("ok")] >= 2


async def wait_reports(group: Group, calls: int, *, within: float) -> None:
    """Wait until the daemon has made `calls` `health:sync` calls, whatever their result."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        page = await metrics(group)
        reports = 'sidecar_store_requests_total{op="sync",'
        if sum(v for k, v in page.items() if k.startswith(reports)) >= calls:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {calls} health:sync calls within {within}s")


# Two rounds of questions to peers that do not answer (1 s each), and the slack.
WITNESS_BOUND = 2 * 1.0 + SLACK + 1


async def test_store_deployment_runtime_is_proven_by_the_sync(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The built-in convex check of the store's own deployment makes no function call: the
    store's syncs prove the runtime. No `health:ping` reaches it while the syncs answer; a
    refusal (wrong secret) is an answer, so the check keeps passing; a runtime answering 503
    to every sync fails it once no answer came within two store periods plus the timeout,
    and the first answer after the fault brings it back."""
    window = 2 * STORE_PERIOD + STORE_TIMEOUT  # how long one answer proves the runtime
    queries: list[dict[str, Any]] = []

    def count(request: dict[str, Any]) -> dict[str, Any]:
        queries.append(request)
        return request

    async with switch_server(upstream=convex_local.url) as store:
        env = daemon_env(store.url, "faults-store-proof", [])
        log = tmp_path_factory.mktemp("faults-store-proof") / "daemon.log"
        async with running_group(env, log, {}, store=store, healthy=("convex",)) as group:
            store.inject(Forward(count), paths=("/api/query",))
            await asyncio.sleep(window + 1)
            assert queries == []
            assert await verbose_status(group) == "pass"

            store.inject(_signed(WRONG_SECRET), paths=("/api/mutation",))
            await wait_store(group, "error", within=STORE_BUDGET + SLACK + 2)
            await asyncio.sleep(window + 1)
            assert await verbose_status(group) == "pass"

            store.inject(faults.respond(503, CONVEX_503), paths=("/api/mutation",))
            took = await wait_state(group, "convex", "fail", within=window + 5)
            # Peers the session's Convex named earlier may be asked first (witnesses while the
            # store is down): none of them answers for this daemon, so it leaves within the
            # questions' bound.
            await wait_for(group.url + "/ready", 503, within=WITNESS_BOUND)
            ready_status, ready = await get_json(group, "/ready")
            _, details = await verbose_health(group)
            store.clear()
            back = await wait_state(group, "convex", "pass", within=STORE_BUDGET + 3)
    assert took >= STORE_BUDGET, took  # not before the last answer's window ran out
    assert took <= window + 2 * 0.5 + TIMEOUT + SLACK, took
    assert ready_status == 503
    assert "convex is fail" in ready["reasons"], ready
    assert "no store call answered within" in details["checks"]["convex"]["output"]
    assert back <= STORE_BUDGET + SLACK + 1, back


async def verbose_status(group: Group, check: str = "convex") -> str:
    _, body = await verbose_health(group)
    status: str = body["checks"][check]["status"]
    return status
