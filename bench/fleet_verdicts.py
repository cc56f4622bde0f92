"""How fast five sidecars behind the real Caddy reach their verdicts, at the default settings.

    .venv/bin/python bench/fleet_verdicts.py [--scenario N]... [--json] [--interval 10]
        [--timeout 2] [--store-interval 60] [--drain-seconds 15] [--caddy-interval 2s]
        [--outage 60] [--sample-every 0.1] [--phase 0] [--workdir DIR]

The fleet of tests/clients/caddy/test_shared_outage.py: app-1 .. app-5 on 127.0.0.2 .. 127.0.0.6,
each with its sidecar on the same address, behind the real Caddy running config/Caddyfile. The
sidecars run the seed's checks (convex, mastra) at the default settings unless an option says
otherwise (SIDECAR_INTERVAL 10 s, SIDECAR_TIMEOUT 2 s, SIDECAR_STORE_INTERVAL 60 s, the default
thresholds and drain; Caddy asks /ready every 2 s): only addresses and ports differ. They share
one dev/convex-local (holding the operator's key too), each through a TCP proxy of its own that
a scenario can cut, and reach the real Mastra each through a switchable HTTP proxy of its own.
Every scenario starts a fresh fleet (and Convex), so none inherits another's instances, and
its fault comes right after every sidecar's first sync (or a random 0..--phase seconds later):

  1  Mastra fails for app-1 alone: seconds after the fault until its first failed probe (the
     first request its Mastra proxy failed), its /ready 503, Caddy's first failed health check
     of it (Caddy's log: from then on Caddy routes no request to it) and Caddy's
     upstreams_healthy gauge 0 (refreshed every 10 s); the other four stay ready
  2  Mastra fails for all five: how many were unready at any sample (goal 0), and when each
     knew the shared verdict (its `shared outage: mastra` log line), seconds after the last
     instance's first failed probe
  3  `health-sidecar drain --instance app-1's --reason bench`, then `undrain`: seconds until
     its /ready turns 503 (200) and until the CLI returns
  4  app-5's sidecar killed with SIGKILL: seconds until `health-sidecar fleet --json` no longer
     lists it (given up after 5 store periods: "not within")
  5  Convex unreachable for all five for --outage seconds, under 20 req/s through Caddy:
     samples with all five unready, the most unready at once, failed client requests, and
     seconds from Convex's return until each has synced again
  6  Convex cut off from app-1 alone: seconds until its /ready is 503; the others stay ready
  7  Convex and Mastra down together for --outage seconds: how many leave

Each scenario is bounded in time (a figure that does not come in time is reported as null,
"not within"); everything is stopped by its PID at the end. Traffic goes to 127.0.0.x only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.checks import DEFAULT_INTERVAL, DEFAULT_TIMEOUT
from tests.support import faults, procs
from tests.support.caddyfleet import (
    Container,
    Fleet,
    Hit,
    Sample,
    live_instances,
    running_fleet,
    sample_readiness,
    steady_traffic,
)
from tests.support.daemon import clean_env, metric, metrics_text
from tests.support.procs import OPERATOR_SECRET, SECRET
from tests.support.switch import SwitchServer, TcpProxy, switch_server, tcp_proxy

SIZE = 5
MASTRA_DOWN = faults.respond(503, b'{"success":false}')
SHARED = 'sidecar_shared_outage{check="mastra"}'
SYNCED = 'sidecar_store_requests_total{op="sync",result="ok"}'
RATE = 20  # client requests per second through Caddy, where a scenario sends traffic
Figures = dict[str, Any]


@dataclass(frozen=True)
class Options:
    """The settings under test: the defaults, unless the command line says otherwise."""

    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    store_interval: float = 60.0
    drain_seconds: float = 15.0
    caddy_interval: str = "2s"
    outage: float = 60.0
    sample_every: float = 0.1
    phase: float = 0.0  # wait a random 0..phase seconds after the start before the fault

    def sidecar_settings(self) -> dict[str, str]:
        """Every sidecar's environment beyond addresses, ports and the secret: the seed's
        checks only (no `app` check), at these intervals."""
        return {
            "SIDECAR_INTERVAL": f"{self.interval:g}",
            "SIDECAR_TIMEOUT": f"{self.timeout:g}",
            "SIDECAR_STORE_INTERVAL": f"{self.store_interval:g}",
            "SIDECAR_CHECKS": "[]",
        }

    @property
    def verdict_bound(self) -> float:
        """How long a verdict may take before it is reported "not within": three check
        intervals and two store periods, and 10 s."""
        return 3 * self.interval + 2 * self.store_interval + 10


@dataclass
class Bench:
    """The fleet behind Caddy, its Convex, and each container's proxies, in the same order."""

    fleet: Fleet
    store: procs.Proc  # dev/convex-local itself (the CLI reaches it directly)
    mastra: list[SwitchServer]
    convex: list[TcpProxy]
    opts: Options
    wall_offset: float = field(default_factory=lambda: time.time() - time.monotonic())

    @property
    def containers(self) -> list[Container]:
        return self.fleet.containers

    def monotonic(self, iso: str) -> float:
        """A log line's UTC timestamp on the time.monotonic() scale."""
        return datetime.fromisoformat(iso).timestamp() - self.wall_offset


@contextlib.asynccontextmanager
async def bench_fleet(workdir: Path, mastra_url: str, opts: Options) -> AsyncIterator[Bench]:
    """dev/convex-local (with the operator's key), one Convex TCP proxy and one Mastra proxy
    per container, the five containers behind Caddy, all serving; stopped on exit (sidecars
    first, with their last sync, then the proxies and Convex)."""
    async with contextlib.AsyncExitStack() as stack:
        store = await asyncio.to_thread(
            procs.start_convex_local,
            workdir / "convex.log",
            SECRET,
            operator_secret=OPERATOR_SECRET,
        )
        stack.push_async_callback(asyncio.to_thread, store.stop)
        mastra = [
            await stack.enter_async_context(switch_server(upstream=mastra_url)) for _ in range(SIZE)
        ]
        convex = [await stack.enter_async_context(tcp_proxy(store.url)) for _ in range(SIZE)]
        fleet = await stack.enter_async_context(
            running_fleet(
                workdir / "fleet",
                [proxy.url for proxy in convex],
                [proxy.url for proxy in mastra],
                drain=opts.drain_seconds,
                caddy_interval=opts.caddy_interval,
                settings=opts.sidecar_settings(),
            )
        )
        names = {c.name for c in fleet.containers}
        await fleet.wait_served_by(names, within=10 * fleet.caddy_interval + 10, batch=40)
        yield Bench(fleet, store, mastra, convex, opts)


# Watching and waiting -------------------------------------------------------------------------


@dataclass
class Watch:
    """What was seen while a scenario ran: every /ready sample, every client request."""

    samples: list[Sample] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)

    def since(self, start: float) -> list[Sample]:
        return [s for s in self.samples if s.at >= start]


@contextlib.asynccontextmanager
async def watching(bench: Bench, *, most_seconds: float, rate: float = 0) -> AsyncIterator[Watch]:
    """Sample every sidecar's /ready (and send `rate` requests a second through Caddy) for a
    block, at most `most_seconds`; the Watch is filled in when the block ends."""
    watch = Watch()
    stop = asyncio.Event()
    every = bench.opts.sample_every
    sampler = asyncio.create_task(
        sample_readiness(bench.containers, stop, every=every, most=int(most_seconds / every) + 1)
    )
    traffic = None
    if rate:
        traffic = asyncio.create_task(
            steady_traffic(bench.fleet.url, stop, rate=rate, max_requests=int(rate * most_seconds))
        )
    try:
        yield watch
    finally:
        stop.set()
        watch.samples = await sampler
        watch.hits = await traffic if traffic is not None else []


async def seconds_until(
    condition: Callable[[], Awaitable[bool]], *, since: float, within: float, step: float = 0.1
) -> float | None:
    """Poll `condition` until it holds: seconds from `since`, or None when not within."""
    deadline = since + within
    while time.monotonic() < deadline:
        if await condition():
            return time.monotonic() - since
        await asyncio.sleep(step)
    return None


async def ready_status(container: Container) -> int | None:
    """The status of a sidecar's /ready (None: no answer)."""
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(container.sidecar.url + "/ready") as resp,
        ):
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


def ready_is(container: Container, status: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await ready_status(container) == status

    return check


async def series(container: Container, name: str) -> float | None:
    """One series of a sidecar's /metrics (None: no answer)."""
    try:
        return metric(await metrics_text(container.sidecar.url), name)
    except (OSError, TimeoutError, AssertionError):
        return None


def log_times(bench: Bench, container: Container, prefix: str, since: float) -> list[float]:
    """When (monotonic) the sidecar logged a message starting with `prefix`, from `since`."""
    times = []
    for line in container.sidecar.output().splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = json.loads(line)
            if str(entry["message"]).startswith(prefix):
                at = bench.monotonic(entry["timestamp"])
                if at >= since - 0.5:  # log timestamps and our clock: within a few ms
                    times.append(at)
    return times


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def unready_counts(samples: Sequence[Sample], indexes: Sequence[int]) -> int:
    """Samples in which any sidecar at `indexes` was not ready."""
    return sum(any(s.statuses[i] != 200 for i in indexes) for s in samples)


def ever_unready(samples: Sequence[Sample]) -> int:
    """How many sidecars were unready in at least one sample."""
    return sum(any(s.statuses[i] != 200 for s in samples) for i in range(SIZE))


async def all_ready(bench: Bench) -> bool:
    return all([await ready_status(c) == 200 for c in bench.containers])


# The scenarios ------------------------------------------------------------------------------


async def local_mastra_fault(bench: Bench) -> Figures:
    """1: Mastra fails for app-1 alone."""
    opts, target = bench.opts, bench.containers[0]
    within = opts.verdict_bound
    async with watching(bench, most_seconds=within + 2 * opts.interval + 10) as watch:
        start = time.monotonic()
        bench.mastra[0].inject(MASTRA_DOWN)

        start_wall = start + bench.wall_offset

        async def caddy_failed_check() -> bool:
            return bool(bench.fleet.failed_checks(target, start_wall))

        async def caddy_gauge_0() -> bool:
            return await bench.fleet.gauge(target) == 0

        to_503, to_check, to_gauge = await asyncio.gather(
            seconds_until(ready_is(target, 503), since=start, within=within),
            seconds_until(caddy_failed_check, since=start, within=within),
            seconds_until(caddy_gauge_0, since=start, within=within),
        )
        await asyncio.sleep(2 * opts.interval)  # the others stay ready a while longer
    checks = bench.fleet.failed_checks(target, start_wall)
    if to_check is not None and checks:
        to_check = min(checks) - start_wall  # from Caddy's log, to the millisecond
    first = bench.mastra[0].first_fault_at
    bench.mastra[0].clear()
    to_first = None if first is None else first - start
    samples = watch.since(start)
    return {
        "first_failed_probe_s": rounded(to_first),
        "ready_503_s": rounded(to_503),
        "ready_503_after_first_failed_probe_s": rounded(
            None if to_503 is None or to_first is None else to_503 - to_first
        ),
        "caddy_first_failed_check_s": rounded(to_check),
        "caddy_gauge_0_s": rounded(to_gauge),
        "others_unready_samples": unready_counts(samples, range(1, SIZE)),
        "samples": len(samples),
    }


async def shared_mastra_outage(bench: Bench) -> Figures:
    """2: Mastra fails for all five."""
    opts, containers = bench.opts, bench.containers
    within = opts.verdict_bound

    async def every_one_shared() -> bool:
        return all([await series(c, SHARED) == 1.0 for c in containers])

    async with watching(bench, most_seconds=within + 2 * opts.interval + 10) as watch:
        start = time.monotonic()
        for proxy in bench.mastra:
            proxy.inject(MASTRA_DOWN)
        all_shared = await seconds_until(every_one_shared, since=start, within=within, step=0.25)
        await asyncio.sleep(2 * opts.interval)  # the outage goes on: do they stay ready?
    firsts = [proxy.first_fault_at for proxy in bench.mastra]
    for proxy in bench.mastra:
        proxy.clear()
    samples = watch.since(start)
    known = [
        min(log_times(bench, c, "shared outage: mastra", start), default=None) for c in containers
    ]
    last_first = max((t for t in firsts if t is not None), default=None)
    return {
        "most_unready": max((s.unready for s in samples), default=0),
        "instances_ever_unready": ever_unready(samples),
        "samples_any_unready": sum(s.unready > 0 for s in samples),
        "samples": len(samples),
        "first_failed_probes_s": [rounded(None if t is None else t - start) for t in firsts],
        "shared_known_after_last_first_failed_probe_s": [
            rounded(None if t is None or last_first is None else t - last_first) for t in known
        ],
        "all_shared_gauges_s": rounded(all_shared),
    }


async def timed_cli(env: dict[str, str], *args: str, within: float) -> tuple[int | None, str]:
    """`python -m sidecar ARGS` as a process; its exit code (None: stopped after `within`
    seconds, by its PID) and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        cwd=procs.ROOT,
        env=clean_env(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, ""
    return proc.returncode, out.decode(errors="replace")


async def central_drain(bench: Bench) -> Figures:
    """3: `drain` and `undrain` of app-1 with the CLI."""
    target = bench.containers[0]
    within = bench.opts.verdict_bound
    env = {
        "CONVEX_URL": bench.store.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
    }
    figures: Figures = {}
    for command, status in (("drain", 503), ("undrain", 200)):
        args = [command, "--instance", target.instance]
        if command == "drain":
            args += ["--reason", "bench"]
        start = time.monotonic()

        async def cli_returns(
            args: list[str] = args, start: float = start, command: str = command
        ) -> float:
            figures[f"{command}_cli_exit"], output = await timed_cli(env, *args, within=within)
            figures[f"{command}_cli_said"] = output.strip().splitlines()[-1:]
            return time.monotonic() - start

        returned, took = await asyncio.gather(
            cli_returns(), seconds_until(ready_is(target, status), since=start, within=within)
        )
        figures[f"{command}_ready_{status}_s"] = rounded(took)
        figures[f"{command}_cli_returned_s"] = rounded(returned)
    return figures


async def killed_instance(bench: Bench) -> Figures:
    """4: app-5's sidecar killed with SIGKILL (no drain, no last sync)."""
    victim = bench.containers[-1]
    within = 5 * bench.opts.store_interval
    start = time.monotonic()
    os.killpg(victim.sidecar.popen.pid, signal.SIGKILL)  # its own session: its PID, its group
    await asyncio.to_thread(victim.sidecar.popen.wait, 10)

    async def gone() -> bool:
        return victim.instance not in await live_instances(bench.store.url)

    step = max(1.0, bench.opts.store_interval / 12)
    took = await seconds_until(gone, since=start, within=within, step=step)
    return {"out_of_fleet_s": rounded(took), "gave_up_after_s": within, "poll_every_s": step}


async def convex_outage(bench: Bench, *, mastra_too: bool = False) -> Figures:
    """5 (7 with `mastra_too`): Convex unreachable for all five for --outage seconds."""
    opts, containers = bench.opts, bench.containers
    recovery = 3 * opts.store_interval + 10
    rate = 0 if mastra_too else RATE
    async with watching(bench, most_seconds=opts.outage + recovery + 10, rate=rate) as watch:
        start = time.monotonic()
        for proxy in bench.convex:
            await proxy.cut()
        if mastra_too:
            for mastra in bench.mastra:
                mastra.inject(MASTRA_DOWN)
        await asyncio.sleep(opts.outage)
        back = time.monotonic()
        synced_before = [await series(c, SYNCED) or 0.0 for c in containers]
        for proxy in bench.convex:
            await proxy.restore()
        for mastra in bench.mastra:
            mastra.clear()

        async def each_synced() -> bool:
            counts = [await series(c, SYNCED) or 0.0 for c in containers]
            return all(n > b for n, b in zip(counts, synced_before, strict=True))

        synced = await seconds_until(each_synced, since=back, within=recovery, step=0.5)
        ready_again = await seconds_until(lambda: all_ready(bench), since=back, within=recovery)
    during = [s for s in watch.samples if start <= s.at < back]
    after = watch.since(back)
    figures: Figures = {
        "samples_all_unready": sum(s.unready == SIZE for s in during),
        "samples": len(during),
        "most_unready": max((s.unready for s in during), default=0),
        "instances_ever_unready": ever_unready(during),
        "most_unready_after_return": max((s.unready for s in after), default=0),
        "all_synced_after_return_s": rounded(synced),
        "all_ready_after_return_s": rounded(ready_again),
    }
    if not mastra_too:
        figures["failed_requests"] = sum(not h.ok for h in watch.hits)
        figures["requests"] = len(watch.hits)
    return figures


async def convex_cut_for_one(bench: Bench) -> Figures:
    """6: Convex cut off from app-1 alone."""
    opts, target = bench.opts, bench.containers[0]
    within = opts.verdict_bound
    async with watching(bench, most_seconds=2 * within + 2 * opts.interval + 10) as watch:
        start = time.monotonic()
        await bench.convex[0].cut()
        to_503 = await seconds_until(ready_is(target, 503), since=start, within=within)
        await asyncio.sleep(2 * opts.interval)  # the others stay ready a while longer
        back = time.monotonic()
        await bench.convex[0].restore()
        to_200 = await seconds_until(ready_is(target, 200), since=back, within=within)
    samples = [s for s in watch.samples if start <= s.at < back]
    return {
        "ready_503_s": rounded(to_503),
        "others_unready_samples": unready_counts(samples, range(1, SIZE)),
        "samples": len(samples),
        "ready_200_after_return_s": rounded(to_200),
    }


async def convex_and_mastra(bench: Bench) -> Figures:
    return await convex_outage(bench, mastra_too=True)


Scenario = Callable[[Bench], Awaitable[Figures]]
SCENARIOS: dict[int, tuple[str, Scenario]] = {
    1: ("local Mastra fault on app-1", local_mastra_fault),
    2: ("Mastra outage for all five", shared_mastra_outage),
    3: ("central drain and undrain of app-1 (CLI)", central_drain),
    4: ("app-5's sidecar killed (SIGKILL)", killed_instance),
    5: ("Convex unreachable for all five", convex_outage),
    6: ("Convex cut off from app-1 alone", convex_cut_for_one),
    7: ("Convex and Mastra down for all five", convex_and_mastra),
}


async def measure(
    numbers: Sequence[int], opts: Options, workdir: Path, mastra_url: str
) -> dict[int, Figures]:
    """Run each scenario in `numbers` on a fresh fleet, one after the other; its figures."""
    results: dict[int, Figures] = {}
    for number in numbers:
        title, scenario = SCENARIOS[number]
        print(f"scenario {number}: {title} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        async with bench_fleet(workdir / f"scenario-{number}", mastra_url, opts) as bench:
            phase = random.uniform(0, opts.phase)
            await asyncio.sleep(phase)
            results[number] = await scenario(bench)
        results[number]["phase_s"] = round(phase, 1)
        results[number]["wall_s"] = round(time.monotonic() - started, 1)
        print(f"  {json.dumps(results[number])}", file=sys.stderr, flush=True)
    return results


def table(results: dict[int, Figures]) -> str:
    """One row per figure: scenario, figure, value (null: not within its bound)."""
    rows = [("#", "scenario", "figure", "value")]
    for number, figures in results.items():
        for name, value in figures.items():
            shown = "not within" if value is None else json.dumps(value)
            rows.append((str(number), SCENARIOS[number][0], name, shown))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )


def positive(text: str) -> float:
    """An option's number of seconds, above 0 (argparse names the option when it refuses)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is below 0")
    return value


def caddy_duration(text: str) -> str:
    """A Caddy duration as the Caddyfile's health_interval takes it: `250ms`, `2s`."""
    if re.fullmatch(r"\d+(\.\d+)?(ms|s)", text) is None or float(text.rstrip("ms")) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 250ms or 2s")
    return text


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--scenario",
        type=int,
        action="append",
        choices=sorted(SCENARIOS),
        help="run this scenario (repeatable; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    defaults = Options()
    parser.add_argument("--interval", type=positive, default=defaults.interval, help="seconds")
    parser.add_argument("--timeout", type=positive, default=defaults.timeout, help="seconds")
    parser.add_argument("--store-interval", type=positive, default=defaults.store_interval)
    parser.add_argument("--drain-seconds", type=not_negative, default=defaults.drain_seconds)
    parser.add_argument(
        "--caddy-interval", type=caddy_duration, default=defaults.caddy_interval, help="e.g. 2s"
    )
    parser.add_argument(
        "--outage", type=positive, default=defaults.outage, help="Convex outage (5, 7), seconds"
    )
    parser.add_argument("--sample-every", type=positive, default=defaults.sample_every)
    parser.add_argument(
        "--phase",
        type=not_negative,
        default=defaults.phase,
        help="wait a random 0..PHASE seconds after the fleet is up before the fault "
        "(default 0: the fault comes right after every sidecar's first sync)",
    )
    parser.add_argument("--workdir", type=Path, help="for logs (default: a temporary folder)")
    args = parser.parse_args(argv)
    opts = Options(
        interval=args.interval,
        timeout=args.timeout,
        store_interval=args.store_interval,
        drain_seconds=args.drain_seconds,
        caddy_interval=args.caddy_interval,
        outage=args.outage,
        sample_every=args.sample_every,
        phase=args.phase,
    )
    return args, opts


def main(argv: Sequence[str] | None = None) -> None:
    args, opts = parse_args(argv)
    numbers = sorted(set(args.scenario or SCENARIOS))
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="fleet-verdicts-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with procs.mastra(workdir / "mastra.log") as mastra:
        results = asyncio.run(measure(numbers, opts, workdir, mastra.url))
    if args.json:
        print(json.dumps({"settings": asdict(opts), "scenarios": results}, indent=2))
    else:
        print(table(results))
        print(f"settings: {json.dumps(asdict(opts))}; logs in {workdir}")


if __name__ == "__main__":
    main()
