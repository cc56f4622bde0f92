"""Scale, by simulation: N sidecars in one process against one dev/convex-local.

    .venv/bin/python bench/fleet_sim.py [--sizes 10,50,200] [--interval 1] [--store-interval 5]
        [--store-timeout 2] [--steady 20] [--session per-instance|shared] [--connections 64]
        [--panic-checks 1,16] [--no-subscribe]

Each simulated instance is the sidecar's own objects, wired as sidecar/app.py wires them: its
Settings (sidecar.config, from the environment a daemon would get: CONVEX_URL, MASTRA_URL, the
secret, SIDECAR_INSTANCE and the timings), so the `convex` and `mastra` checks are resolved
(interval, thresholds, `panic`) by the real code; a Monitor; the Scheduler (its pace, jitter,
fast re-probe in transition and hurry), whose probe is simulated; a Syncer with a HealthStore
and ConvexClient against the stand-in; and a Watch holding its own `health:watch` subscription
over the stand-in's WebSocket sync protocol (not with `--no-subscribe`: the instances poll).
There are no HTTP servers, and the probe only says what the simulated weather is: `mastra`
passes, or fails for every instance during the simulated outage; Mastra itself is never
contacted. The Syncer runs unchanged: one sync per store period, one soon after a change, one
every check interval while a panic check fails.

For each N, against a fresh dev/convex-local (its `/_dev/stats` counts calls, documents and
bytes as Convex bills them):

1. steady state: calls per second (all, and per instance), documents and bytes read and
   written per sync, after a reset of the counters;
2. a shared outage: at t0 every instance's `mastra` starts failing. Every instance's
   Snapshot is sampled every 50 ms: the time until every one has `mastra` in shared_outages
   and is ready (the fleet recognised it), the most instances unready at once meanwhile, and
   the cost per sync while the outage lasts (instances then sync every check interval);
3. recovery: `mastra` passes again; the time until every instance is ready and healthy with
   no shared outage, and until Convex holds no failing rows;
4. drains: `health:drain` of one instance, then its undrain, then of every instance and the
   undrain of all, signed with the operator's key as the CLI signs them: the time until every
   target shows it, and what it cost.

In every phase the `health:watch` runs (each run and re-run of a subscribed query is a call in
`/_dev/stats`, as Convex bills it) are reported per instance.

Then, with the simulated instances stopped, the stand-in's own capacity: syncs a second it
serves to 8 closed-loop clients, for a steady-state sync and for an outage-time sync (a
changed record and the panic list), with its CPU time per call. That tells whether a slow
convergence is the stand-in (convex-test runs one function at a time, in one Node thread) or
the protocol.

With `--panic-checks K1,K2,...` (the concurrency mode), each size runs once per K: every
instance has K panic checks (`mastra` and K-1 more, `dep_01`...), and the outage fails all K on
every instance at once. The stand-in models Convex's optimistic concurrency (dev/convex-local,
occ.ts; on by default), so the report adds, over the outage (onset and held): the syncs that
failed and why, OCC conflicts a second (with retries and calls failed after Convex's retries),
the largest transaction (documents and bytes read and written, execution time) and whether the
outage was recognised (every instance ready with all K in shared_outages) with 0 instances
unready. The capacity measurement is skipped in that mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import SECRET, stop_on_sigterm, workdir
from sidecar import __version__, logs
from sidecar.checks import Check
from sidecar.config import Settings, load_settings
from sidecar.config_errors import ConfigError
from sidecar.fleet import FleetView
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.result import CheckResult
from sidecar.scheduler import Scheduler
from sidecar.snapshot import Snapshot
from sidecar.state import Record
from sidecar.store import ConvexClient, HealthStore, StoreError
from sidecar.store.evidence import RuntimeEvidence
from sidecar.store.messages import SyncAnswer, SyncRequest
from sidecar.store.signing import fingerprint
from sidecar.sync import Syncer, SyncTiming
from sidecar.warmstart import WarmStart
from sidecar.watch import Watch
from tests.support import procs
from tests.support.procs import OPERATOR_SECRET

MASTRA_URL = "http://127.0.0.1:4111"  # resolved into the `mastra` check, never contacted
WATCH = "health:watch"  # the subscribed query: each run and re-run is a call in /_dev/stats
SAMPLE = 0.05  # every instance's Snapshot is read this often during the outage and recovery
PROBE_LATENCY = 0.002  # what a simulated probe says it took
FAIL_OUTPUT = "HTTP 503 from /health"
# Environment variables a daemon reads (and their prefix): cleared, then set, per instance.
DAEMON_KEYS = (
    "CONVEX_URL",
    "NEXT_PUBLIC_CONVEX_URL",
    "MASTRA_URL",
    "NEXT_PUBLIC_MASTRA_URL",
    "HEALTH_SIDECAR_SECRET",
    "HOSTNAME",
)
CAPACITY_CLIENTS = 8
CAPACITY_SECONDS = 5.0
OUTAGE_CHECK = "mastra"


def outage_checks(k: int) -> frozenset[str]:
    """The K panic checks that fail together in the outage: `mastra` and K-1 `dep_NN`."""
    return frozenset([OUTAGE_CHECK, *(f"dep_{i:02d}" for i in range(1, k))])


# ---------------------------------------------------------------------------------------------
# Options.


@dataclass(frozen=True)
class Options:
    sizes: tuple[int, ...]
    interval: float
    timeout: float
    store_interval: float
    store_timeout: float
    threshold: float | None
    steady: float
    outage_limit: float
    outage_hold: float
    recovery_limit: float
    session: str
    connections: int
    seed: int
    logs: Path
    panic_checks: tuple[int, ...] = ()
    subscribe: bool = True

    def env(self, convex_url: str, instance: str, k: int = 1) -> dict[str, str]:
        """The environment a daemon of this simulated fleet would get."""
        env = {
            "CONVEX_URL": convex_url,
            "MASTRA_URL": MASTRA_URL,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": instance,
            "SIDECAR_INTERVAL": f"{self.interval:g}",
            "SIDECAR_TIMEOUT": f"{self.timeout:g}",
            "SIDECAR_STORE_INTERVAL": f"{self.store_interval:g}",
            "SIDECAR_STORE_TIMEOUT": f"{self.store_timeout:g}",
            "SIDECAR_LOG_LEVEL": "warning",
        }
        if self.threshold is not None:
            env["SIDECAR_PANIC_THRESHOLD"] = f"{self.threshold:g}"
        extra = sorted(outage_checks(k) - {OUTAGE_CHECK})
        if extra:  # never contacted: the simulated probes feed them
            target = "http://127.0.0.1:9/"
            checks = [
                {"name": name, "kind": "http", "target": target + name, "panic": True}
                for name in extra
            ]
            env["SIDECAR_CHECKS"] = json.dumps(checks)
        return env


@contextlib.contextmanager
def daemon_environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ as a daemon started with `env` would see it (nothing else of ours leaks in:
    no SIDECAR_* or CONVEX_URL of the caller, no SIDECAR_CONFIG file)."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            upper = key.upper()
            if upper.startswith("SIDECAR_") or upper in DAEMON_KEYS:
                del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_for(options: Options, convex_url: str, instance: str, k: int = 1) -> Settings:
    with daemon_environment(options.env(convex_url, instance, k)):
        return load_settings()


# ---------------------------------------------------------------------------------------------
# What the stand-in counts, and the CPU its processes use.


async def dev_stats(
    session: aiohttp.ClientSession, url: str
) -> tuple[dict[str, float], dict[str, Any], dict[str, dict[str, float]]]:
    """`/_dev/stats` summed over every function: calls, errors, documents and bytes; its
    `transactions` (OCC conflicts, retries, the largest transaction; empty from a stand-in
    without them); and the counts of each function."""
    async with session.get(f"{url}/_dev/stats") as resp:
        body = await resp.json()
    functions: dict[str, dict[str, float]] = body["functions"]
    keys = ("calls", "errors", "documentsRead", "bytesRead", "documentsWritten", "bytesWritten")
    sums = {k: sum(f.get(k, 0.0) for f in functions.values()) for k in keys}
    transactions: dict[str, Any] = body.get("transactions", {})
    return sums, transactions, functions


async def dev_reset(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(f"{url}/_dev/stats/reset") as resp:
        await resp.read()


async def dev_table(session: aiohttp.ClientSession, url: str, table: str) -> list[Any] | None:
    """Every document of `table` (a dev route; not counted in the stats), or None when a
    saturated stand-in (it queues the route behind the syncs) did not answer in time."""
    try:
        async with session.get(f"{url}/_dev/tables/{table}") as resp:
            rows: list[Any] = await resp.json()
            return rows
    except (TimeoutError, aiohttp.ClientError):
        return None


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes in process group `pgid` (the stand-in
    is started in its own session: tsx and the node it runs)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Meter:
    """Counters over one phase: the stand-in's, its CPU and ours, and the syncs we saw."""

    url: str
    pgid: int
    calls: Calls
    started: float = 0.0
    cpu_convex: float = 0.0
    cpu_self: float = 0.0
    mark: int = 0

    async def start(self, session: aiohttp.ClientSession) -> None:
        await dev_reset(session, self.url)
        self.started = time.monotonic()
        self.cpu_convex = group_cpu(self.pgid)
        self.cpu_self = time.process_time()
        self.mark = len(self.calls.log)

    async def read(self, session: aiohttp.ClientSession) -> Phase:
        counted, transactions, functions = await dev_stats(session, self.url)
        seconds = time.monotonic() - self.started
        return Phase(
            seconds=seconds,
            stats=counted,
            transactions=transactions,
            functions=functions,
            cpu_convex=(group_cpu(self.pgid) - self.cpu_convex) / seconds,
            cpu_self=(time.process_time() - self.cpu_self) / seconds,
            syncs=self.calls.log[self.mark :],
        )


@dataclass(frozen=True)
class Phase:
    """What one phase cost: the stand-in's counters over `seconds`, the CPU (in cores) of the
    stand-in and of this process, the syncs this process made (end, duration, outcome), and
    the stand-in's counts per function."""

    seconds: float
    stats: Mapping[str, float]
    transactions: Mapping[str, Any]
    cpu_convex: float
    cpu_self: float
    syncs: Sequence[tuple[float, float, str]]
    functions: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def of(self, fn: str, key: str) -> float:
        """Function `fn`'s count of `key` (`calls`, `bytesRead`, ...) over the phase."""
        return float(self.functions.get(fn, {}).get(key, 0.0))

    @property
    def calls(self) -> float:
        return self.stats["calls"]

    def per_call(self, key: str) -> float:
        return self.stats[key] / max(self.calls, 1)

    def rate(self) -> float:
        return self.calls / self.seconds

    def failed(self) -> Counter[str]:
        return Counter(kind for _, _, kind in self.syncs if kind != "ok")

    def latency(self, q: float) -> float:
        durations = sorted(d for _, d, _ in self.syncs)
        if not durations:
            return float("nan")
        return durations[min(len(durations) - 1, int(q * len(durations)))]

    def convex_ms_per_call(self) -> float:
        return 1000 * self.cpu_convex * self.seconds / max(self.calls, 1)


# ---------------------------------------------------------------------------------------------
# One simulated instance.


@dataclass
class Calls:
    """Every sync of the simulated fleet, as the client saw it: (end, seconds, outcome)."""

    log: list[tuple[float, float, str]] = field(default_factory=list)


class TimedStore(HealthStore):
    """The sidecar's HealthStore, timing each sync for the report (nothing else changes)."""

    calls: Calls

    async def sync(self, request: SyncRequest) -> SyncAnswer:
        started = time.monotonic()
        outcome = "ok"
        try:
            return await super().sync(request)
        except StoreError as exc:
            outcome = exc.kind
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            end = time.monotonic()
            if outcome != "cancelled":
                self.calls.log.append((end, end - started, outcome))


@dataclass
class Weather:
    """What the simulated probes find: whether the outage's checks (`mastra`, and the `dep_NN`
    of the concurrency mode) are down for everyone."""

    mastra_failing: bool = False
    checks: frozenset[str] = frozenset([OUTAGE_CHECK])


class Instance:
    """One sidecar without HTTP server: Monitor, Scheduler, Syncer and (subscribed) Watch as
    sidecar/app.py wires them, the Scheduler's probe simulated (what `weather` says)."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        calls: Calls,
        weather: Weather,
        rng: random.Random,
        watch_session: aiohttp.ClientSession | None,
    ) -> None:
        self.name = settings.instance
        self.checks = settings.resolved_checks
        timing = SyncTiming(period=settings.store_interval, timeout=settings.store_timeout)
        metrics = Metrics(checks=[c.name for c in self.checks], version=__version__)
        self.monitor = Monitor(
            instance=settings.instance,
            version=__version__,
            checks=self.checks,
            metrics=metrics,
            fleet=FleetView(threshold=settings.panic_threshold, grace=timing.grace),
        )
        secret = settings.secret.get_secret_value()
        self.store = TimedStore(
            ConvexClient(session, url=settings.convex_url, timeout=settings.store_timeout),
            secret=secret,
            instance=settings.instance,
            version=__version__,
            ttl_seconds=settings.ttl,
            period_seconds=settings.store_interval,
        )
        self.store.calls = calls
        evidence = RuntimeEvidence(
            url=settings.convex_url,
            window=2 * settings.store_interval + settings.store_timeout,
        )
        self.fingerprints = {c.name: fingerprint(secret, c.definition()) for c in self.checks}
        self._weather = weather
        self.scheduler = Scheduler(
            monitor=self.monitor,
            metrics=metrics,
            session=session,
            checks=self.checks,
            probe=self._probe,
            rng=rng,
        )
        # The fleet's facts as they change, as the daemon subscribes (None: polling only).
        self.watch = (
            None
            if watch_session is None
            else Watch(
                monitor=self.monitor,
                session=watch_session,
                url=settings.convex_url,
                instance=settings.instance,
                hurry=self.scheduler.hurry,
            )
        )
        self.syncer = Syncer(
            monitor=self.monitor,
            store=self.store,
            metrics=metrics,
            evidence=evidence,
            fingerprints=self.fingerprints,
            timing=timing,
            threshold=settings.panic_threshold,
            warm_start=WarmStart(monitor=self.monitor, fingerprints=self.fingerprints),
            on_answer=None if self.watch is None else self.watch.answered,
        )

    async def run(self, delay: float, deadline: float) -> None:
        """Start after `delay`; probe and sync until cancelled or `deadline` (event-loop
        time)."""
        await asyncio.sleep(delay)
        async with asyncio.timeout_at(deadline), asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run())
            group.create_task(self.syncer.run())
            if self.watch is not None:
                group.create_task(self.watch.run())

    async def _probe(self, session: aiohttp.ClientSession, check: Check) -> CheckResult:
        """The simulated probe: the outage's checks fail while it lasts, everything else
        passes; Mastra itself is never contacted."""
        failing = self._weather.mastra_failing and check.name in self._weather.checks
        return CheckResult(
            status="fail" if failing else "pass",
            output=FAIL_OUTPUT if failing else "",
            latency=PROBE_LATENCY,
            observed_at=time.time() - PROBE_LATENCY,
        )


# ---------------------------------------------------------------------------------------------
# One fleet size.


@dataclass
class Row:
    n: int
    k: int  # panic checks failing in the outage
    steady: Phase
    outage: Phase
    onset: Phase
    recovery: Phase
    first_fail: float | None  # s after t0: the first instance whose mastra status is fail
    all_fail: float | None  # ... every instance's
    recognised: float | None  # ... every instance ready with mastra in shared_outages
    relapses: int  # samples after recognition where that no longer held
    most_unready: int
    unready_seconds: float  # sum over samples of unready instances x SAMPLE: instance-seconds
    recovered: float | None  # s after t1: every instance ready, healthy, no shared outage
    convex_clean: float | None  # ... no sidecarFailing row left in Convex
    recovery_unready: int
    recovery_unready_seconds: float  # instance-seconds unready during the recovery
    steady_unready: int
    loop_lag: float  # the sampler's worst lateness (s): how busy this process was
    warmup: float
    warm: Phase  # from the stand-in's start until every instance is ready: the hellos
    capacity: dict[str, Phase]
    subscribed: int  # instances subscribed at the end of the steady state
    drains: dict[str, Drained]  # "one": one instance drained, then undrained; "all": every one


def sessions_for(
    options: Options, n: int
) -> tuple[list[aiohttp.ClientSession], Callable[[int], aiohttp.ClientSession]]:
    """One session per instance as the daemon has it (force_close, at most 10 connections),
    or one shared session with `connections` connections for the whole fleet."""
    headers = {"User-Agent": f"health-sidecar/{__version__} (fleet-sim)"}
    if options.session == "shared":
        shared = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=options.connections), headers=headers
        )
        return [shared], lambda i: shared
    own = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=10), headers=headers
        )
        for _ in range(n)
    ]
    return own, lambda i: own[i]


async def wait_for(
    predicate: Callable[[], bool], *, within: float, step: float = 0.1
) -> float | None:
    """Seconds until `predicate` holds, or None after `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if predicate():
            return time.monotonic() - started
        await asyncio.sleep(step)
    return None


async def run_size(n: int, options: Options, out: Callable[[str], None], k: int = 1) -> Row:
    """Start a fresh stand-in, run N simulated instances (K panic checks failing in the outage)
    through the three phases, measure the stand-in's capacity, and stop everything."""
    log_dir = options.logs / (f"n{n}-k{k}" if options.panic_checks else f"n{n}")
    log_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    with procs.convex_local(log_dir / "convex-local.log", SECRET) as convex:
        url, pgid = convex.url, convex.popen.pid
        calls, weather = Calls(), Weather(checks=outage_checks(k))
        meter = Meter(url=url, pgid=pgid, calls=calls)
        # A connection per request: Node closes idle ones after 5 s, and the phases sleep longer
        # than that between two admin calls (a reused, closed connection fails the POST).
        admin = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(force_close=True),
        )
        owned, session_of = sessions_for(options, n)
        # Each instance holds its own WebSocket, as a daemon does; one session (without a
        # connection limit, which a socket would hold for good) opens them all.
        watch_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        owned.append(watch_session)
        fleet = [
            Instance(
                settings_for(options, url, f"sim-{i:04d}", k),
                session_of(i),
                calls=calls,
                weather=weather,
                rng=random.Random(options.seed * 100_003 + i),
                watch_session=watch_session if options.subscribe else None,
            )
            for i in range(n)
        ]
        # Every loop below is bounded by its own limit; this bounds the instances themselves.
        budget = 60 + options.store_interval * 3 + options.steady
        budget += options.outage_limit + options.outage_hold + options.recovery_limit + 30
        deadline = loop.time() + budget
        # Start times spread over one store period, as a fleet's are, so the steady-state
        # syncs are spread over the period too.
        ramp = options.store_interval
        warm_meter = Meter(url=url, pgid=pgid, calls=calls)
        await warm_meter.start(admin)
        tasks = [
            asyncio.create_task(inst.run(ramp * i / n, deadline), name=inst.name)
            for i, inst in enumerate(fleet)
        ]
        try:
            return await measure(
                n, k, options, fleet, tasks, weather, meter, warm_meter, admin, out
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for session in owned:
                await session.close()
            await admin.close()


async def measure(
    n: int,
    k: int,
    options: Options,
    fleet: list[Instance],
    tasks: list[asyncio.Task[None]],
    weather: Weather,
    meter: Meter,
    warm_meter: Meter,
    admin: aiohttp.ClientSession,
    out: Callable[[str], None],
) -> Row:
    url = meter.url

    def snaps() -> list[Snapshot]:
        return [inst.monitor.snapshot for inst in fleet]

    def all_ready() -> bool:
        return all(s.ready and s.store.status == "ok" for s in snaps())

    # Warm-up: every instance registered (hello), ready and synced; then one more store
    # period, so the first round's changes are behind us. The stand-in is fresh: its counters
    # count the registrations from zero (run_size resets them before the first one starts).
    warm_limit = options.store_interval * 2 + 60
    warmup = await wait_for(all_ready, within=warm_limit)
    if warmup is None:
        dead = [t.get_name() for t in tasks if t.done()]
        unready = sum(not s.ready for s in snaps())
        not_ok = sum(s.store.status != "ok" for s in snaps())
        problem = (
            f"N={n}: not every instance was ready and synced within {warm_limit:g}s "
            f"({unready} unready, {not_ok} with store not ok; ended tasks: {dead[:5]})"
        )
        if not options.panic_checks or dead:
            raise RuntimeError(problem)
        # The concurrency mode measures an overloaded start too: the outage goes on from here.
        out(f"  {problem}; going on")
        warmup = float(warm_limit)
    warm = await warm_meter.read(admin)
    await asyncio.sleep(options.store_interval + 1)
    out(f"  N={n}: ready after {warmup:.1f}s; steady state for {options.steady:g}s")

    # 1. Steady state.
    await meter.start(admin)
    steady_unready = 0
    until = time.monotonic() + options.steady
    while time.monotonic() < until:
        steady_unready = max(steady_unready, sum(not s.ready for s in snaps()))
        await asyncio.sleep(0.25)
    steady = await meter.read(admin)
    subscribed = sum(s.fleet.subscribed for s in snaps())

    # 2. The shared outage.
    out(f"  N={n}: mastra fails everywhere")
    await meter.start(admin)
    t0 = time.monotonic()
    weather.mastra_failing = True
    first_fail = all_fail = recognised = None
    most_unready, relapses, unready_samples, lag = 0, 0, 0, 0.0
    onset: Phase | None = None
    outage_meter: Meter | None = None
    next_sample = t0
    while True:
        now = time.monotonic()
        lag = max(lag, now - next_sample)
        elapsed = now - t0
        current = snaps()
        unready = sum(not s.ready for s in current)
        unready_samples += unready
        most_unready = max(most_unready, unready)
        failing = sum(all(s.statuses[c] == "fail" for c in weather.checks) for s in current)
        if first_fail is None and failing:
            first_fail = elapsed
        if all_fail is None and failing == n:
            all_fail = elapsed
        held = all(s.ready and weather.checks <= s.shared_outages.keys() for s in current)
        if recognised is None and held:
            recognised = elapsed
            # The outage's own cost: from recognition on, for `outage_hold` seconds.
            onset = await meter.read(admin)
            outage_meter = Meter(url=url, pgid=meter.pgid, calls=meter.calls)
            await outage_meter.start(admin)
        elif recognised is not None and not held:
            relapses += 1
        if recognised is not None and elapsed >= recognised + options.outage_hold:
            break
        if recognised is None and elapsed >= options.outage_limit:
            break
        next_sample += SAMPLE
        await asyncio.sleep(max(0.0, next_sample - time.monotonic()))
    if outage_meter is None:  # never recognised: the whole window is the onset
        onset = await meter.read(admin)
        outage = onset
    else:
        outage = await outage_meter.read(admin)
    assert onset is not None

    # 3. Recovery.
    out(f"  N={n}: mastra passes again")
    await meter.start(admin)
    t1 = time.monotonic()
    weather.mastra_failing = False
    recovered = convex_clean = None
    recovery_unready, recovery_samples = 0, 0
    next_sample, next_table = t1, t1
    while time.monotonic() - t1 < options.recovery_limit:
        now = time.monotonic()
        lag = max(lag, now - next_sample)
        current = snaps()
        unready = sum(not s.ready for s in current)
        recovery_unready = max(recovery_unready, unready)
        recovery_samples += unready
        if recovered is None and all(
            s.ready and s.health == "ok" and not s.shared_outages for s in current
        ):
            recovered = now - t1
        if convex_clean is None and now >= next_table:
            if await dev_table(admin, url, "sidecarFailing") == []:
                convex_clean = time.monotonic() - t1
            next_table = now + 0.25
        if recovered is not None and convex_clean is not None:
            break
        next_sample += SAMPLE
        await asyncio.sleep(max(0.0, next_sample - time.monotonic()))
    # Count the recovery's syncs up to a store period past it (the panic list's last send).
    await asyncio.sleep(max(0.0, t1 + (recovered or 0) + 2 * options.interval - time.monotonic()))
    recovery = await meter.read(admin)

    # 4. Drains: one instance, then every one; each undrained again.
    out(f"  N={n}: drain and undrain one instance, then all")
    drains = {
        "one": await drain_cycle(fleet[:1], meter, admin),
        "all": await drain_cycle(fleet, meter, admin, every=True),
    }

    # The stand-in's capacity, with the fleet stopped (its documents stay).
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    capacity = {}
    if not options.panic_checks:
        out(f"  N={n}: measuring the stand-in's capacity")
        capacity = {
            shape: await stand_in_capacity(url, meter.pgid, fleet[0], shape, meter.calls)
            for shape in ("steady", "outage")
        }
    return Row(
        n=n,
        k=k,
        steady=steady,
        outage=outage,
        onset=onset,
        recovery=recovery,
        first_fail=first_fail,
        all_fail=all_fail,
        recognised=recognised,
        relapses=relapses,
        most_unready=most_unready,
        unready_seconds=unready_samples * SAMPLE,
        recovered=recovered,
        convex_clean=convex_clean,
        recovery_unready=recovery_unready,
        recovery_unready_seconds=recovery_samples * SAMPLE,
        steady_unready=steady_unready,
        loop_lag=lag,
        warmup=warmup,
        warm=warm,
        capacity=capacity,
        subscribed=subscribed,
        drains=drains,
    )


@dataclass(frozen=True)
class Drained:
    """A drain and its undrain: seconds from the call until every target's Snapshot shows
    it (None: not within DRAIN_LIMIT), and what each cost (the call, the re-runs it caused)."""

    targets: int
    drain_s: float | None
    undrain_s: float | None
    drain: Phase
    undrain: Phase


DRAIN_LIMIT = 10.0  # seconds a drain or undrain may take to show, at most
SETTLE = 2.0  # seconds the counters run on after it showed (late re-runs, syncs it caused)


async def drain_cycle(
    targets: Sequence[Instance],
    meter: Meter,
    admin: aiohttp.ClientSession,
    *,
    every: bool = False,
) -> Drained:
    """`health-sidecar drain` of `targets` (or `--all`), then `undrain`, as the CLI signs
    them (the operator's key): each measured from the call until every target shows it, plus
    SETTLE seconds."""
    operator = HealthStore(
        ConvexClient(admin, url=meter.url, timeout=10),
        secret=SECRET,
        instance="fleet-sim-operator",
        version=__version__,
        ttl_seconds=60,
        operator_secret=OPERATOR_SECRET,
    )
    names = None if every else [t.name for t in targets]
    results: list[tuple[float | None, Phase]] = []
    for drain in (True, False):
        await meter.start(admin)
        reason = "sim" if drain else None  # an undrain has none
        await operator.drain(
            drain=drain, instances=names, reason=reason, by="fleet-sim", for_ms=None
        )

        def shown(drain: bool = drain) -> bool:
            return all((t.monitor.snapshot.central_drain is not None) == drain for t in targets)

        took = await wait_for(shown, within=DRAIN_LIMIT, step=0.02)
        await asyncio.sleep(SETTLE)
        results.append((took, await meter.read(admin)))
    (drain_s, drained), (undrain_s, undrained) = results
    return Drained(len(targets), drain_s, undrain_s, drained, undrained)


async def stand_in_capacity(
    url: str, pgid: int, model: Instance, shape: str, calls: Calls
) -> Phase:
    """Syncs a second the stand-in serves to CAPACITY_CLIENTS closed-loop clients, each a
    fresh instance: a steady-state sync (heartbeat only), or an outage-time one (a changed
    `mastra` record and the panic list, as a failing instance sends every check interval)."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as admin,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CAPACITY_CLIENTS)) as session,
    ):
        stores = []
        for k in range(CAPACITY_CLIENTS):
            store = TimedStore(
                ConvexClient(session, url=url, timeout=30),
                secret=SECRET,
                instance=f"cap-{shape}-{k}",
                version=__version__,
                ttl_seconds=60,
            )
            store.calls = Calls()
            await store.sync(SyncRequest(hello=model.fingerprints))
            stores.append(store)
        meter = Meter(url=url, pgid=pgid, calls=calls)
        await meter.start(admin)
        stop = time.monotonic() + CAPACITY_SECONDS

        async def client(store: TimedStore) -> None:
            failures = 0
            while time.monotonic() < stop:
                failures += 1
                request = SyncRequest()
                if shape == "outage":
                    record = Record(
                        check="mastra",
                        fingerprint=model.fingerprints["mastra"],
                        status="fail",
                        age_ms=2.0,
                        latency_ms=2.0,
                        output=FAIL_OUTPUT,
                        consecutive_failures=failures,
                        consecutive_successes=0,
                        last_success_age_ms=60_000.0,
                    )
                    request = SyncRequest(records=[record], panic=("mastra",), hold_ms=5_000.0)
                await store.sync(request)

        await asyncio.gather(*(client(s) for s in stores))
        phase = await meter.read(admin)
        syncs = [entry for s in stores for entry in s.calls.log[1:]]
        return replace(phase, syncs=syncs)


# ---------------------------------------------------------------------------------------------
# The report.


def seconds(value: float | None, limit: float) -> str:
    return f"> {limit:g}" if value is None else f"{value:.2f}"


def table(rows: Sequence[Row], options: Options) -> str:
    lines = [
        "| N | steady calls/s (per instance) | steady docs read / written per sync "
        "| steady bytes read / written per sync "
        "| outage recognised after s (mastra fail on all at) "
        "| most unready at once (instance-s unready) | outage calls/s (per instance) "
        "| outage docs read / written per sync | outage bytes read / written per sync "
        "| recovered after s (Convex clean at) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, o = r.steady, r.outage
        lines.append(
            f"| {r.n} | {s.rate():.1f} ({s.rate() / r.n:.3f}) "
            f"| {s.per_call('documentsRead'):.2f} / {s.per_call('documentsWritten'):.2f} "
            f"| {s.per_call('bytesRead'):.0f} / {s.per_call('bytesWritten'):.0f} "
            f"| {seconds(r.recognised, options.outage_limit)} "
            f"({seconds(r.all_fail, options.outage_limit)}) "
            f"| {r.most_unready} of {r.n} ({r.unready_seconds:.1f}) "
            f"| {o.rate():.1f} ({o.rate() / r.n:.3f}) "
            f"| {o.per_call('documentsRead'):.2f} / {o.per_call('documentsWritten'):.2f} "
            f"| {o.per_call('bytesRead'):.0f} / {o.per_call('bytesWritten'):.0f} "
            f"| {seconds(r.recovered, options.recovery_limit)} "
            f"({seconds(r.convex_clean, options.recovery_limit)}) |"
        )
    return "\n".join(lines)


def subscriptions(rows: Sequence[Row], options: Options) -> str:
    """The subscriptions' cost: `health:watch` runs (each a function call, as Convex bills a
    query re-run) per instance, in steady state (an hour's worth), over one shared outage
    (onset and held; recovery) and over one drain and undrain (of one instance; of all)."""
    lines = [
        "| N | subscribed | steady: calls per instance per hour (watch re-runs) "
        "| outage onset + held: watch re-runs per instance (bytes read; onset / held) "
        "| recovery: re-runs per instance (bytes read) "
        "| drain + undrain of one: shown after s, re-runs (all instances) "
        "| drain + undrain of all: shown after s, re-runs per instance |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        hour = 3600 / r.steady.seconds / r.n
        held = (r.onset, r.outage) if r.outage is not r.onset else (r.onset,)
        outage_runs = sum(p.of(WATCH, "calls") for p in held) / r.n
        outage_bytes = sum(p.of(WATCH, "bytesRead") for p in held) / r.n
        split = " / ".join(f"{p.of(WATCH, 'calls') / r.n:.2f}" for p in held)
        one, every = r.drains["one"], r.drains["all"]
        limit = DRAIN_LIMIT
        lines.append(
            f"| {r.n} | {r.subscribed} of {r.n} "
            f"| {r.steady.calls * hour:.1f} ({r.steady.of(WATCH, 'calls') * hour:.1f}) "
            f"| {outage_runs:.2f} ({outage_bytes:.0f} B; {split}) "
            f"| {r.recovery.of(WATCH, 'calls') / r.n:.2f} "
            f"({r.recovery.of(WATCH, 'bytesRead') / r.n:.0f} B) "
            f"| {seconds(one.drain_s, limit)} / {seconds(one.undrain_s, limit)}, "
            f"{one.drain.of(WATCH, 'calls'):.0f} / {one.undrain.of(WATCH, 'calls'):.0f} "
            f"| {seconds(every.drain_s, limit)} / {seconds(every.undrain_s, limit)}, "
            f"{every.drain.of(WATCH, 'calls') / r.n:.2f} / "
            f"{every.undrain.of(WATCH, 'calls') / r.n:.2f} |"
        )
    lines.append("")
    lines.append(
        f"- Steady state over {options.steady:g} s, scaled to an hour; the store interval is "
        f"{options.store_interval:g} s (the daemon's default, 60 s, makes 60 calls an hour). "
        f"Outage and recovery as in the table above; a drain is counted from its call until "
        f"{SETTLE:g} s after every target showed it."
    )
    return "\n".join(lines)


def diagnostics(rows: Sequence[Row], options: Options) -> str:
    lines = [
        "| N | phase | calls/s | docs read / written per call | sync p50 / p99 ms (client) "
        "| failed syncs | stand-in CPU (cores) | stand-in CPU ms per call "
        "| this process CPU (cores) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        phases = [
            ("start: hellos", r.warm),
            ("steady", r.steady),
            ("outage onset", r.onset),
            ("outage held", r.outage),
            ("recovery", r.recovery),
            *((f"capacity, {k} syncs", v) for k, v in r.capacity.items()),
        ]
        for name, p in phases:
            failed = p.failed()
            fails = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "0"
            lines.append(
                f"| {r.n} | {name} ({p.seconds:.1f} s) | {p.rate():.1f} "
                f"| {p.per_call('documentsRead'):.1f} / {p.per_call('documentsWritten'):.1f} "
                f"| {1000 * p.latency(0.5):.1f} / {1000 * p.latency(0.99):.1f} | {fails} "
                f"| {p.cpu_convex:.2f} | {p.convex_ms_per_call():.2f} | {p.cpu_self:.2f} |"
            )
    notes = [
        f"- N={r.n}: warm-up {r.warmup:.1f} s; unready at most {r.steady_unready} in steady "
        f"state, {r.recovery_unready} during recovery ({r.recovery_unready_seconds:.2f} "
        f"instance-s); first mastra fail "
        f"{seconds(r.first_fail, options.outage_limit)} s after t0; {r.relapses} samples after "
        f"recognition where some instance was unready or without the outage; sampler's "
        f"worst lateness {1000 * r.loop_lag:.0f} ms"
        for r in rows
    ]
    notes.append(
        "- The stand-in's CPU per call includes its idle work (timers, GC) and /proc's 10 ms "
        "ticks: read it where the stand-in is busy, in the capacity rows (one core = saturated: "
        "convex-test runs one function at a time)."
    )
    return "\n".join([*lines, "", *notes])


def largest(phases: Sequence[Phase], measure: str) -> tuple[float, str]:
    """The largest transaction by `measure` over `phases` (value, function path)."""
    best: tuple[float, str] = (0.0, "")
    for phase in phases:
        entry = phase.transactions.get("largest", {}).get(measure, {})
        value = float(entry.get("value", 0.0))
        if value > best[0]:
            best = (value, str(entry.get("fn", "")))
    return best


def concurrency(rows: Sequence[Row], options: Options) -> str:
    """The concurrency mode's table: the outage (onset and held) under the stand-in's OCC."""
    lines = [
        "| N | failing panic checks | OCC | outage recognised after s (most unready) "
        "| syncs in the outage (failed: why) | conflicts/s (retries, failed after retries) "
        "| largest transaction: docs read / bytes read | docs written / bytes written "
        "| longest transaction ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        window = (r.onset, r.outage) if r.outage is not r.onset else (r.onset,)
        seconds_ = sum(p.seconds for p in window)
        tx = [p.transactions for p in window]
        conflicts = sum(float(t.get("conflicts", 0)) for t in tx)
        retries = sum(float(t.get("retries", 0)) for t in tx)
        gave_up = sum(float(t.get("failedAfterRetries", 0)) for t in tx)
        failed: Counter[str] = Counter()
        for p in window:
            failed.update(p.failed())
        syncs = sum(len(p.syncs) for p in window)
        why = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"
        everything = [r.warm, r.steady, r.onset, r.outage, r.recovery]
        docs_read, docs_read_fn = largest(everything, "documentsRead")
        bytes_read, _ = largest(everything, "bytesRead")
        docs_written, docs_written_fn = largest(everything, "documentsWritten")
        bytes_written, _ = largest(everything, "bytesWritten")
        ms, ms_fn = largest(everything, "ms")
        occ = str(r.onset.transactions.get("occ", "absent"))
        verdict = (
            f"yes, {seconds(r.recognised, options.outage_limit)}"
            if r.recognised is not None and r.most_unready == 0
            else f"{'no' if r.recognised is None else 'late'}, "
            f"{seconds(r.recognised, options.outage_limit)}"
        )
        lines.append(
            f"| {r.n} | {r.k} | {occ} | {verdict} ({r.most_unready} of {r.n}) "
            f"| {syncs} ({sum(failed.values())}: {why}) "
            f"| {conflicts / max(seconds_, 1e-9):.1f} ({retries:.0f}, {gave_up:.0f}) "
            f"| {docs_read:.0f} / {bytes_read:.0f} ({docs_read_fn}) "
            f"| {docs_written:.0f} / {bytes_written:.0f} ({docs_written_fn}) "
            f"| {ms:.1f} ({ms_fn}) |"
        )
    lines.append("")
    for r in rows:
        window = (r.onset, r.outage) if r.outage is not r.onset else (r.onset,)
        by_fn: Counter[str] = Counter()
        for p in window:
            for fn, counts in p.transactions.get("byFunction", {}).items():
                by_fn[f"{fn} conflicts"] += int(counts.get("conflicts", 0))
                by_fn[f"{fn} failed after retries"] += int(counts.get("failedAfterRetries", 0))
        background = sum(int(p.transactions.get("backgroundConflicts", 0)) for p in window)
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by_fn.items())) or "no conflict"
        lines.append(
            f"- N={r.n}, K={r.k}: in the outage, {detail}; background (scheduled) conflicts "
            f"{background}"
        )
    return "\n".join(lines)


def header(options: Options, sample: Settings) -> str:
    checks = ", ".join(
        f"{c.name} ({c.kind}, every {c.interval:g} s, timeout {c.timeout:g} s, "
        f"panic={c.panic}, critical={c.critical}, fail after {c.failures_before_fail}, "
        f"pass after {c.successes_before_pass}, jitter {c.jitter:g})"
        for c in sample.resolved_checks
    )
    session = (
        "one aiohttp session per instance (force_close, limit 10, as the daemon)"
        if options.session == "per-instance"
        else f"one shared aiohttp session, at most {options.connections} connections"
    )
    return "\n".join(
        [
            "Simulated timings (short, so a run takes minutes; the daemon's defaults are "
            "10 s / 60 s / 2 s):",
            f"  check interval {options.interval:g} s (SIDECAR_INTERVAL), probe timeout "
            f"{options.timeout:g} s, store interval {options.store_interval:g} s "
            f"(SIDECAR_STORE_INTERVAL), store timeout {options.store_timeout:g} s, store TTL "
            f"{sample.ttl:g} s, panic threshold {sample.panic_threshold:g}",
            f"  checks as Settings resolve them: {checks}",
            f"  steady state measured over {options.steady:g} s; outage cost measured over "
            f"{options.outage_hold:g} s after recognition; {session}",
        ]
    )


def command_line(options: Options) -> str:
    argv = [
        ".venv/bin/python",
        "bench/fleet_sim.py",
        "--sizes",
        ",".join(map(str, options.sizes)),
        "--interval",
        f"{options.interval:g}",
        "--timeout",
        f"{options.timeout:g}",
        "--store-interval",
        f"{options.store_interval:g}",
        "--store-timeout",
        f"{options.store_timeout:g}",
        "--steady",
        f"{options.steady:g}",
        "--outage-hold",
        f"{options.outage_hold:g}",
        "--session",
        options.session,
        "--seed",
        str(options.seed),
    ]
    if options.session == "shared":
        argv += ["--connections", str(options.connections)]
    if options.threshold is not None:
        argv += ["--threshold", f"{options.threshold:g}"]
    if options.panic_checks:
        argv += ["--panic-checks", ",".join(map(str, options.panic_checks))]
    if not options.subscribe:
        argv += ["--no-subscribe"]
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,50,200", help="fleet sizes, comma-separated")
    parser.add_argument("--interval", type=float, default=1.0, help="SIDECAR_INTERVAL (s)")
    parser.add_argument("--timeout", type=float, default=0.5, help="SIDECAR_TIMEOUT (s)")
    parser.add_argument("--store-interval", type=float, default=5.0, help="(s)")
    parser.add_argument("--store-timeout", type=float, default=2.0, help="(s)")
    parser.add_argument("--threshold", type=float, help="SIDECAR_PANIC_THRESHOLD")
    parser.add_argument("--steady", type=float, default=20.0, help="steady state measured (s)")
    parser.add_argument("--outage-limit", type=float, default=60.0, help="give up after (s)")
    parser.add_argument(
        "--outage-hold", type=float, default=10.0, help="outage after recognition (s)"
    )
    parser.add_argument("--recovery-limit", type=float, default=60.0, help="give up after (s)")
    parser.add_argument("--session", choices=("per-instance", "shared"), default="per-instance")
    parser.add_argument("--connections", type=int, default=64, help="shared session's limit")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-subscribe",
        action="store_true",
        help="no health:watch subscription: the instances poll, as before v3",
    )
    parser.add_argument("--logs", type=Path, help="where the logs go (default: a temp folder)")
    parser.add_argument(
        "--panic-checks",
        default="",
        help="the concurrency mode: panic checks failing in the outage, per run (e.g. 1,16)",
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs positive integers")
    panic_checks = tuple(int(s) for s in args.panic_checks.split(",") if s.strip())
    if panic_checks and min(panic_checks) < 1:
        parser.error("--panic-checks needs positive integers")
    return Options(
        sizes=sizes,
        interval=args.interval,
        timeout=args.timeout,
        store_interval=args.store_interval,
        store_timeout=args.store_timeout,
        threshold=args.threshold,
        steady=args.steady,
        outage_limit=args.outage_limit,
        outage_hold=args.outage_hold,
        recovery_limit=args.recovery_limit,
        session=args.session,
        connections=args.connections,
        seed=args.seed,
        logs=workdir(args.logs),
        panic_checks=panic_checks,
        subscribe=not args.no_subscribe,
    )


async def run(options: Options) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    try:
        most = max(options.panic_checks or (1,))
        sample = settings_for(options, "http://127.0.0.1:3210", "sim-0000", most)
    except ConfigError as exc:
        out(str(exc))
        return 2
    out(f"logs in {options.logs}")
    started = time.monotonic()
    rows = []
    for n in options.sizes:
        for k in options.panic_checks or (1,):
            rows.append(await run_size(n, options, out, k))
            if options.panic_checks:  # each row as soon as it is measured
                out(concurrency(rows[-1:], options).splitlines()[2])
    took = time.monotonic() - started
    out("")
    out(header(options, sample))
    out("")
    if options.panic_checks:
        out("The outage under the stand-in's optimistic concurrency (dev/convex-local, occ.ts):")
        out("")
        out(concurrency(rows, options))
        out("")
    out(table(rows, options))
    out("")
    out("The subscriptions (health:watch):" if options.subscribe else "Not subscribed:")
    out("")
    out(subscriptions(rows, options))
    out("")
    out("Where the time and the calls went:")
    out("")
    out(diagnostics(rows, options))
    out("")
    out(f"took {took:.0f} s; reproduce with:")
    out(f"  {command_line(options)}")
    return 0


def main() -> int:
    options = parse()
    stop_on_sigterm()  # until the loop runs, and after: SystemExit unwinds every `with`
    # The instances' own log lines (one per change, per instance) go to a file, not the table.
    log_file = (options.logs / "sidecar.log").open("w", encoding="utf-8")
    logs.configure(level="warning", instance="fleet-sim", stream=log_file)

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # SIGTERM cancels the run: every task is cancelled, every session closed, and every
        # stand-in stopped by its PID as the `with` blocks unwind.
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run(options)
        except asyncio.CancelledError:
            print("stopped (SIGTERM): everything started was stopped", file=sys.stderr)
            return 143

    try:
        return asyncio.run(guarded())
    finally:
        stop_on_sigterm()
        log_file.close()


if __name__ == "__main__":
    sys.exit(main())
