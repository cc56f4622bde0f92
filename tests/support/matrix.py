"""The fault matrix: faults x target kinds, what each cell must reach, and the harness that runs
one daemon per target kind with one check per fault, each on its own switchable fault target.

A cell: the check passes; the fault is injected at runtime; within (thresholds x interval) +
timeout the check serves its expected state while `/live`, `/ready` and `/health` answer in
under 150 ms (half the probe timeout) at p99 (>= 200 requests each, from a separate process);
the fault is cleared and the
check passes again within one interval + timeout; the daemon logged exactly one line per
state change, its memory and file descriptors stayed flat, and no background task died.

Expected states (why a fault is harmless for some kinds). Columns: convex `/instance_name`
(its public route, "/route" below), convex `/api/*` (the function runtime: the check's
`health:ping`, and the store's sync too), mastra, http (any 2xx), tcp.

| fault              | /route   | /api           | mastra          | http     | tcp                |
| ------------------ | -------- | -------------- | --------------- | -------- | ------------------ |
| refuse             | fail (host-wide)          | fail            | fail     | fail               |
| hang               | fail     | fail           | fail            | fail     | fail (queue full)  |
| slow headers       | fail     | fail           | fail            | fail     | -                  |
| slow body          | fail     | fail           | fail            | fail     | -                  |
| 500                | fail     | fail           | fail            | fail     | -                  |
| 200 garbage        | PASS (1) | fail           | fail            | PASS (2) | -                  |
| 200, 200 MB body   | PASS (1) | fail (> 4 MiB) | fail (> 64 KiB) | PASS (2) | -                  |
| reset mid-body     | fail     | fail           | fail            | fail     | -                  |
| wrong content type | PASS (1) | fail           | fail            | PASS (2) | -                  |
| unresolvable       | fail (host-wide)          | fail            | fail     | fail               |

(1) `/instance_name` promises only that Convex answers 200 (DESIGN: "both answer in time"); the
    function-runtime query is what proves Convex works, and it still answers.
(2) The http check is configured as users do by default: any 2xx, no `body_regex`, so the body
    and its content type are not part of the contract. Only the first 64 KiB is read.
"tcp -": a tcp check sees only whether a connection opens; HTTP-level faults reduce to that.
"wrong content type" is an HTML page (`text/html`) answering 200, like a proxy's error page or
Mastra's catch-all welcome page; "200 garbage" claims JSON and sends binary junk.
Connection-level faults (refuse, unresolvable) cannot target one path: for convex they are one
cell for the whole host. An unresolvable name cannot be made to resolve at runtime without
touching the system resolver, so those cells run from the daemon's start and have no recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp

from sidecar.sync import SyncTiming
from tests.support import faults, procs
from tests.support.daemon import start_daemon
from tests.support.latency import Latencies, measure
from tests.support.procs import SECRET
from tests.support.switch import SwitchServer, TcpTarget

INTERVAL = 0.5
TIMEOUT = 0.3
FAILURES_BEFORE_FAIL = 2
SUCCESSES_BEFORE_PASS = 1
STORE_TIMEOUT = 0.5
STORE_PERIOD = 1.0  # SIDECAR_STORE_INTERVAL here: one sync a second
# Scheduling slack on a shared 2-core machine; the figures measured are in the report table.
SLACK = 0.5
FAIL_BUDGET = FAILURES_BEFORE_FAIL * INTERVAL + TIMEOUT
RECOVER_BUDGET = SUCCESSES_BEFORE_PASS * INTERVAL + TIMEOUT
STORE_BUDGET = STORE_PERIOD + STORE_TIMEOUT
# A panic check (convex, mastra) that just failed keeps the instance ready for one interval
# plus the sync's grace, while the fleet's count catches up.
PENDING = INTERVAL + SyncTiming(period=STORE_PERIOD, timeout=STORE_TIMEOUT).grace
# The endpoints never wait for a dependency: a loop that waited for the fault would stall for
# up to the probe's TIMEOUT every INTERVAL, putting far more than 1% of the requests (200 over
# about 1.5 s) above half of it. Half the timeout, not a tighter figure: with three test
# workers and the measuring process on two cores, scheduling alone has put a p99 at 65 ms.
P99_LIMIT = TIMEOUT / 2
ROUNDS = 200
RSS_GROWTH_LIMIT = 20 * 1024 * 1024
# A snapshot of a daemon's descriptors catches every probe socket in flight at that moment
# (checks without jitter probe in step); leaks are judged by connections to the fault's port
# and by the settled count (least over one interval) at the end of a group's life.
FD_TRANSIENT = 4
HUGE = 200 * 1024 * 1024
HUGE_SENT_LIMIT = HUGE // 4  # "never read whole": far below the 200 MB it offers
ENDPOINTS = ("/live", "/ready", "/health")

GARBAGE = bytes(range(256)) * 16  # 4 KiB of binary junk, labelled application/json
HTML = (
    b"<!doctype html><html><head><title>Welcome</title></head>"
    b"<body><h1>It works!</h1></body></html>"
)

Expect = Literal["pass", "fail"]
Kind = Literal["refuse", "http", "backlog", "dns"]


@dataclass(frozen=True)
class Fault:
    """One fault of the matrix; `make` builds a fresh HTTP behaviour for each target."""

    name: str
    title: str
    kind: Kind
    make: Callable[[], faults.Behaviour] | None = None


FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        Fault("refuse", "refuse", "refuse"),
        Fault("hang", "accept, never answer", "http", faults.hang),
        Fault("slow_headers", "slow headers", "http", lambda: faults.slow_headers(0.05)),
        Fault("slow_body", "slow body", "http", lambda: faults.slow_body(0.05)),
        Fault("http_500", "500", "http", lambda: faults.respond(500, b'{"error":"internal"}')),
        Fault("garbage", "200 garbage", "http", lambda: faults.respond(200, GARBAGE)),
        Fault("huge_body", "200, 200 MB body", "http", lambda: faults.CountingHugeBody(HUGE)),
        Fault("reset_mid_body", "reset mid-body", "http", faults.reset_mid_body),
        Fault(
            "wrong_content_type",
            "wrong content type",
            "http",
            lambda: faults.respond(200, HTML, "text/html; charset=utf-8"),
        ),
        Fault("unresolvable", "unresolvable name", "dns"),
        Fault("backlog", "accept queue full (hang)", "backlog"),
    )
}
HTTP_FAULTS = tuple(n for n, f in FAULTS.items() if f.kind == "http")

# What the store's result label is when the store API answers with the fault.
STORE_RESULT = {
    "refuse": "unavailable",
    "hang": "unavailable",
    "slow_headers": "unavailable",
    "slow_body": "unavailable",
    "http_500": "unavailable",
    "garbage": "bad_response",
    "huge_body": "bad_response",
    "reset_mid_body": "unavailable",
    "wrong_content_type": "bad_response",
}


@dataclass(frozen=True)
class Cell:
    """One cell: a target kind (and path scope) x a fault, and the state it must reach."""

    target: str  # the table's column: convex_route, convex_api, convex, mastra, http, tcp
    fault: str
    expect: Expect
    why: str = ""
    paths: tuple[str, ...] = ()  # the fault's path scope on the target ("" = every path)
    store: bool = False  # the store's API gets the same fault

    @property
    def check(self) -> str:
        return f"{self.target}_{self.fault}"

    @property
    def id(self) -> str:
        return f"{self.target}-{self.fault}"


@dataclass
class CellResult:
    """What a cell measured, for the report table."""

    cell: Cell
    state: str = "?"
    to_state: float | None = None
    to_recover: float | None = None
    p99: dict[str, float] = field(default_factory=dict)
    worst: float | None = None
    rss_growth: int | None = None
    fd_growth: int | None = None
    output: str = ""
    huge_sent: int | None = None
    store: str = ""
    note: str = ""


RESULTS: list[CellResult] = []


# The daemon ---------------------------------------------------------------------------------


def check_config(
    name: str, kind: str, target: str, *, critical: bool = True, **extra: Any
) -> dict[str, Any]:
    """One entry of SIDECAR_CHECKS with the matrix's short timings (no jitter)."""
    return {
        "name": name,
        "kind": kind,
        "target": target,
        "interval": INTERVAL,
        "timeout": TIMEOUT,
        "jitter": 0,
        "critical": critical,
        "failures_before_fail": FAILURES_BEFORE_FAIL,
        "successes_before_pass": SUCCESSES_BEFORE_PASS,
        **extra,
    }


def daemon_env(
    convex_url: str, instance: str, checks: list[dict[str, Any]], **extra: str
) -> dict[str, str]:
    return {
        "CONVEX_URL": convex_url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": str(INTERVAL),
        "SIDECAR_TIMEOUT": str(TIMEOUT),
        "SIDECAR_STORE_TIMEOUT": str(STORE_TIMEOUT),
        "SIDECAR_STORE_INTERVAL": str(STORE_PERIOD),
        "SIDECAR_DRAIN_SECONDS": "0",
        "SIDECAR_CHECKS": json.dumps(checks),
        **extra,
    }


@dataclass
class Group:
    """One daemon and the fault targets of its checks."""

    daemon: procs.Proc
    session: aiohttp.ClientSession
    targets: dict[str, SwitchServer | TcpTarget]
    store: SwitchServer | None = None
    started_wall: float = 0.0
    live_statuses: list[int] = field(default_factory=list)
    settled_fds: int = 0

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def pid(self) -> int:
        return self.daemon.popen.pid


@contextlib.asynccontextmanager
async def running_group(
    env: Mapping[str, str],
    log: Path,
    targets: Mapping[str, SwitchServer | TcpTarget],
    *,
    store: SwitchServer | None = None,
    healthy: tuple[str, ...] | None = None,
) -> AsyncIterator[Group]:
    """Start the daemon (in a thread: the fault targets in this loop must keep answering),
    wait until the checks in `healthy` (default: every target's) pass, stop it afterwards."""
    started = time.time()
    daemon = await asyncio.to_thread(start_daemon, env, log)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
    group = Group(daemon, session, dict(targets), store, started)
    try:
        for name in targets if healthy is None else healthy:
            await wait_state(group, name, "pass", within=10)
        group.settled_fds = await settled_fds(daemon.popen.pid)
        yield group
    finally:
        await session.close()
        code = await asyncio.to_thread(daemon.stop)
        assert code == 0, f"the daemon exited with {code}"


# Reading the daemon -------------------------------------------------------------------------


async def verbose_health(group: Group) -> tuple[int, dict[str, Any]]:
    async with group.session.get(group.url + "/health?verbose") as resp:
        return resp.status, await resp.json()


async def status_of(group: Group, check: str) -> str:
    _, body = await verbose_health(group)
    status: str = body["checks"][check]["status"]
    return status


async def wait_state(group: Group, check: str, status: str, *, within: float) -> float:
    """Poll the served state of `check` until it is `status`; return how long that took."""
    started = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - started < within:
        _, body = await verbose_health(group)
        if body["checks"][check]["status"] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    detail = body.get("checks", {}).get(check)
    raise AssertionError(f"{check} did not turn {status} within {within}s; last: {detail}")


async def wait_ready(group: Group, status: int, *, within: float) -> tuple[int, Any]:
    """Poll `/ready` until it answers `status` (or `within` passes); its last answer."""
    deadline = time.monotonic() + within
    answer = await get_json(group, "/ready")
    while answer[0] != status and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        answer = await get_json(group, "/ready")
    return answer


async def wait_store(group: Group, status: str, *, within: float) -> float:
    """Poll `/health` until `services.store` is `status`; return how long that took."""
    started = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - started < within:
        _, body = await verbose_health(group)
        if body["services"]["store"] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"store did not turn {status} within {within}s; last: {body.get('store')}")


async def metrics(group: Group) -> dict[str, float]:
    """The daemon's /metrics page as {series: value}."""
    async with group.session.get(group.url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def runs(check: str, result: str) -> str:
    return f'sidecar_check_runs_total{{check="{check}",result="{result}"}}'


def transitions(check: str, to: str) -> str:
    return f'sidecar_check_transitions_total{{check="{check}",to="{to}"}}'


def store_requests(result: str, op: str = "sync") -> str:
    return f'sidecar_store_requests_total{{op="{op}",result="{result}"}}'


async def wait_metric(group: Group, series: str, at_least: float, *, within: float) -> float:
    """Poll /metrics until `series` reaches `at_least`; return how long that took."""
    started = time.monotonic()
    value = 0.0
    while time.monotonic() - started < within:
        value = (await metrics(group)).get(series, 0.0)
        if value >= at_least:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"{series} = {value}, not {at_least}, within {within}s")


async def wait_failures(group: Group, check: str, count: int, *, within: float) -> float:
    """Poll `/health?verbose` (cheaper to render than /metrics, so the polling disturbs the
    latency measured less) until `check` has failed `count` times in a row."""
    started = time.monotonic()
    detail: Any = None
    while time.monotonic() - started < within:
        _, body = await verbose_health(group)
        detail = body["checks"][check]
        if detail["consecutive_failures"] >= count:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{check} did not fail {count}x in a row within {within}s: {detail}")


def log_lines(group: Group) -> list[dict[str, Any]]:
    """Every complete JSON line the daemon printed (a line being written is left out)."""
    text = group.daemon.output()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wall(line: Mapping[str, Any]) -> float:
    """A log line's timestamp as epoch seconds."""
    return datetime.fromisoformat(str(line["timestamp"])).timestamp()


async def settled_fds(pid: int, span: float = INTERVAL + TIMEOUT) -> int:
    """The least number of open descriptors seen over `span` (probes in flight come and go)."""
    least = proc_stats(pid)[1]
    for _ in range(int(span / 0.05)):
        await asyncio.sleep(0.05)
        least = min(least, proc_stats(pid)[1])
    return least


def connections_to(pid: int, port: int) -> int:
    """How many of the process's own TCP sockets are connected to 127.0.0.1:`port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rpartition(":")[2], 16) == port:
                    count += 1
    return count


def proc_stats(pid: int) -> tuple[int, int]:
    """(RSS in bytes, open file descriptors) of a process, from /proc."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def endpoint_latency(group: Group) -> dict[str, Latencies]:
    """>= ROUNDS requests per endpoint from a separate process, spread over ~1.5 s."""
    result = await measure(group.url, rounds=ROUNDS, paths=ENDPOINTS, pause=0.005)
    group.live_statuses.extend(
        status for status, n in result["/live"].statuses.items() for _ in range(n)
    )
    return result


def assert_fast(latencies: Mapping[str, Latencies], where: str) -> None:
    """Every endpoint answered >= ROUNDS times with p99 < P99_LIMIT; /live always 200."""
    for path, lat in latencies.items():
        assert len(lat.samples) >= ROUNDS, (where, path, len(lat.samples))
        assert lat.p99 < P99_LIMIT, (
            f"{where}: {path} p99 {lat.p99 * 1000:.1f} ms (worst {lat.worst * 1000:.1f} ms)"
        )
    assert set(latencies["/live"].statuses) == {200}, (where, latencies["/live"].statuses)
    for path in ("/ready", "/health"):
        assert set(latencies[path].statuses) <= {200, 503}, (where, path, latencies[path].statuses)


# Injecting and clearing ---------------------------------------------------------------------


async def inject(target: SwitchServer | TcpTarget, fault: Fault, paths: tuple[str, ...]) -> Any:
    """Apply `fault` to `target`; returns the behaviour injected (if any)."""
    if fault.kind == "refuse":
        await target.refuse()
        return None
    if fault.kind == "backlog":
        assert isinstance(target, TcpTarget)
        await target.fill_backlog()
        return None
    assert isinstance(target, SwitchServer)
    assert fault.make is not None
    behaviour = fault.make()
    target.inject(behaviour, paths=paths)
    return behaviour


async def clear(target: SwitchServer | TcpTarget, fault: Fault) -> None:
    if fault.kind == "refuse":
        await target.accept()
    elif fault.kind == "backlog":
        assert isinstance(target, TcpTarget)
        await target.drain_backlog()
    else:
        assert isinstance(target, SwitchServer)
        target.clear()


# One cell -----------------------------------------------------------------------------------


async def run_cell(group: Group, cell: Cell) -> None:
    """Run one cell end to end on its check (see the module docstring); record its figures in
    RESULTS, then assert."""
    result = CellResult(cell)
    RESULTS.append(result)
    fault = FAULTS[cell.fault]
    target = group.targets[cell.check]
    check = cell.check
    await wait_state(group, check, "pass", within=5)
    if cell.store:
        assert group.store is not None
        await wait_store(group, "ok", within=STORE_BUDGET + SLACK + 2)
    before = await metrics(group)
    lines_before = len(log_lines(group))
    rss0, fds0 = proc_stats(group.pid)
    hits0 = target.fault_hits if isinstance(target, SwitchServer) else 0

    behaviour = await inject(target, fault, cell.paths)
    store_behaviour = None
    if cell.store:
        assert group.store is not None
        store_behaviour = await inject(group.store, fault, ("/api/mutation",))
    cleared = False
    latency = asyncio.create_task(endpoint_latency(group))
    try:
        if cell.expect == "fail":
            result.to_state = await wait_state(group, check, "fail", within=FAIL_BUDGET + SLACK + 3)
            # A panic check (convex, mastra) that just failed waits for the fleet's count
            # before it takes the instance out.
            ready_status, ready = await wait_ready(group, 503, within=PENDING + SLACK)
            health_status, health = await get_json(group, "/health")
            result.state = "fail"
            # Hold the fault over more probe rounds: the state must not log again.
            await wait_failures(
                group,
                check,
                FAILURES_BEFORE_FAIL + 2,
                within=(FAILURES_BEFORE_FAIL + 2) * INTERVAL + TIMEOUT + SLACK + 3,
            )
        else:
            result.state = await _hold_pass(group, check, target, hits0)
        if cell.store:
            assert group.store is not None
            await wait_store(group, "error", within=STORE_BUDGET + SLACK + 2)
            result.store = "error"
        latencies = await latency
        _, details = await verbose_health(group)
        result.output = str(details["checks"][check]["output"])
        store_detail = details["store"]
        during = await metrics(group)
        held = connections_to(group.pid, target.port)
        cleared = True
        await clear(target, fault)
        if group.store is not None and cell.store:
            await clear(group.store, fault)
    finally:
        if not latency.done():
            latency.cancel()
            with contextlib.suppress(BaseException):
                await latency
        if not cleared:  # a failed cell must not leave its fault behind for the next ones
            await clear(target, fault)
            if group.store is not None and cell.store:
                await clear(group.store, fault)
    result.to_recover = await wait_state(group, check, "pass", within=RECOVER_BUDGET + SLACK + 3)
    if cell.store:
        took = await wait_store(group, "ok", within=STORE_BUDGET + SLACK + 2)
        result.store = f"error -> ok in {took:.2f}s ({store_detail['error']})"
    after = await metrics(group)
    rss1, fds1 = proc_stats(group.pid)
    left = connections_to(group.pid, target.port)
    lines = log_lines(group)[lines_before:]
    result.p99 = {path: lat.p99 for path, lat in latencies.items()}
    result.worst = max(lat.worst for lat in latencies.values())
    result.rss_growth, result.fd_growth = rss1 - rss0, fds1 - fds0
    for meter in (behaviour, store_behaviour):
        if isinstance(meter, faults.CountingHugeBody) and meter.sent:
            result.huge_sent = max(result.huge_sent or 0, *meter.sent)

    # The assertions, after every figure is recorded.
    where = cell.id
    assert_fast(latencies, where)
    mine = [line for line in lines if line.get("check") == check]
    changes = [(line["from"], line["to"]) for line in mine]
    if cell.expect == "fail":
        assert result.to_state is not None
        assert result.to_state <= FAIL_BUDGET + SLACK, f"{where}: fail after {result.to_state:.2f}s"
        assert ready_status == 503, (where, ready)
        assert f"{check} is fail" in ready["reasons"], (where, ready)
        assert health_status == 503, (where, health)
        assert health["services"][check] == "error", (where, health)
        assert "http://" not in result.output, (where, result.output)
        assert changes == [("pass", "fail"), ("fail", "pass")], (where, mine)
        for to in ("fail", "pass"):
            moved = after.get(transitions(check, to), 0) - before.get(transitions(check, to), 0)
            assert moved == 1, (where, to, moved)
    else:
        assert changes == [], (where, mine)
        assert after.get(transitions(check, "fail"), 0) == before.get(transitions(check, "fail"), 0)
    assert result.to_recover <= RECOVER_BUDGET + SLACK, (
        f"{where}: recovered after {result.to_recover:.2f}s"
    )
    assert during.get(f'sidecar_check_crashes_total{{check="{check}"}}') == 0, where
    assert result.rss_growth < RSS_GROWTH_LIMIT, f"{where}: RSS grew {result.rss_growth} bytes"
    # At most the probe in flight (convex: /instance_name and the query) holds a connection.
    assert held <= 2, f"{where}: {held} connections to the fault target under the fault"
    assert left <= 2, f"{where}: {left} connections to the target after recovery"
    assert result.fd_growth <= len(group.targets) + FD_TRANSIENT, (
        f"{where}: {result.fd_growth} more fds"
    )
    if fault.name == "huge_body":
        assert result.huge_sent is not None, f"{where}: the huge body was never requested"
        assert result.huge_sent < HUGE_SENT_LIMIT, f"{where}: {result.huge_sent} bytes sent"
    if cell.store:
        expected = STORE_RESULT[cell.fault]
        failing = [line for line in lines if line["message"] == "store failing"]
        recovered = [line for line in lines if line["message"] == "store recovered"]
        assert [line["error"] for line in failing] == [expected], (where, failing)
        assert len(recovered) == 1, (where, recovered)
        counted = after.get(store_requests(expected), 0) - before.get(store_requests(expected), 0)
        assert counted >= 1, (where, expected, counted)
        assert store_detail["error"] == expected, (where, store_detail)


async def get_json(group: Group, path: str) -> tuple[int, Any]:
    async with group.session.get(group.url + path) as resp:
        return resp.status, await resp.json()


async def _hold_pass(group: Group, check: str, target: SwitchServer | TcpTarget, hits0: int) -> str:
    """A harmless fault: the check must keep passing while >= 3 probes meet the fault."""
    assert isinstance(target, SwitchServer)
    deadline = time.monotonic() + 3 * INTERVAL + TIMEOUT + SLACK + 3
    while target.fault_hits - hits0 < 3:
        assert time.monotonic() < deadline, f"{check}: the fault was hit {target.fault_hits}x"
        status = await status_of(group, check)
        assert status == "pass", f"{check} turned {status} under a harmless fault"
        await asyncio.sleep(0.02)
    # The third probe's result may still be on its way: give it its timeout.
    await asyncio.sleep(TIMEOUT)
    status = await status_of(group, check)
    assert status == "pass", f"{check} turned {status} under a harmless fault"
    return "pass"


# The whole life of a group ------------------------------------------------------------------


def expected_changes(cells: list[Cell]) -> dict[str, list[str]]:
    """The changes each cell's check must have logged after its first pass: a fail and a
    recovery for every failing cell that ran in this session, nothing otherwise."""
    ran = {r.cell for r in RESULTS}
    return {c.check: ["fail", "pass"] if c in ran and c.expect == "fail" else [] for c in cells}


async def assert_whole_life(group: Group, expected: Mapping[str, list[str]]) -> None:
    """After every cell: no background task died, no check loop crashed, /live answered 200
    throughout, and each check logged exactly the changes its cells caused (`expected`: the
    `to` of every change after its first pass)."""
    assert group.daemon.popen.poll() is None, "the daemon died"
    page = await metrics(group)
    crashes = {k: v for k, v in page.items() if k.startswith("sidecar_check_crashes_total")}
    assert crashes, "no sidecar_check_crashes_total series"
    assert all(v == 0 for v in crashes.values()), crashes
    assert page["sidecar_live"] == 1
    lines = log_lines(group)
    bad = [
        line
        for line in lines
        if line["level"] in ("error", "critical")
        or "crashed" in line["message"]
        or "died" in line["message"]
        or "unexpectedly" in line["message"]
    ]
    assert bad == [], bad
    settled = await settled_fds(group.pid)
    assert settled <= group.settled_fds + FD_TRANSIENT, (group.settled_fds, settled)
    assert group.live_statuses
    assert set(group.live_statuses) == {200}
    for check, tos in expected.items():
        changes = [line["to"] for line in lines if line.get("check") == check]
        first_pass = changes.index("pass") if "pass" in changes else len(changes)
        assert changes[first_pass + 1 :] == tos, (check, changes)


async def run_fault_from_start(group: Group, cell: Cell) -> None:
    """A cell whose fault cannot be switched at runtime (a name that does not resolve): the
    check fails with its first probe after the start, stays failing over several rounds with
    exactly one log line (unknown -> fail) while the endpoints stay fast; no recovery."""
    result = CellResult(cell, note="fault from the start; no recovery (the name never resolves)")
    RESULTS.append(result)
    check = cell.check
    rss0, fds0 = proc_stats(group.pid)
    before = await metrics(group)
    latencies = await endpoint_latency(group)
    await wait_failures(group, check, 4, within=4 * INTERVAL + TIMEOUT + SLACK + 3)
    after = await metrics(group)
    rss1, fds1 = proc_stats(group.pid)
    _, details = await verbose_health(group)
    ready_status, ready = await get_json(group, "/ready")
    lines = log_lines(group)
    listening = next(line for line in lines if line["message"] == "listening")
    mine = [line for line in lines if line.get("check") == check]
    result.state = str(details["checks"][check]["status"])
    result.output = str(details["checks"][check]["output"])
    if mine:
        result.to_state = wall(mine[0]) - wall(listening)
    result.p99 = {path: lat.p99 for path, lat in latencies.items()}
    result.worst = max(lat.worst for lat in latencies.values())
    result.rss_growth, result.fd_growth = rss1 - rss0, fds1 - fds0

    where = cell.id
    assert_fast(latencies, where)
    assert result.state == "fail", (where, details["checks"][check])
    assert "cannot resolve host" in result.output, (where, result.output)
    assert [(line["from"], line["to"]) for line in mine] == [("unknown", "fail")], (where, mine)
    assert result.to_state is not None, where
    assert result.to_state <= TIMEOUT + SLACK, f"{where}: failed {result.to_state:.2f}s in"
    assert after[transitions(check, "fail")] == 1, where
    assert after[runs(check, "fail")] >= max(4, before[runs(check, "fail")] + 2), where
    assert after[runs(check, "pass")] == 0, where
    assert ready_status == 503, (where, ready)
    assert f"{check} is fail" in ready["reasons"], (where, ready)
    assert after[f'sidecar_check_crashes_total{{check="{check}"}}'] == 0, where
    assert result.rss_growth < RSS_GROWTH_LIMIT, f"{where}: RSS grew {result.rss_growth} bytes"
    assert result.fd_growth <= len(group.targets) + FD_TRANSIENT, where
