"""Every benchmark, side by side in one run on this machine, and the results table.

    .venv/bin/python bench/run_all.py [--quick] [--wait-quiet 30] [--markdown FILE]

Runs, one after the other: throughput and latency (bench/throughput.py: the sidecar, a bare
aiohttp handler, a probe-per-request handler), idle RSS and CPU (bench/idle.py), the full soak
(bench/soak.py), start to /live and /ready (bench/startup.py), scheduler drift
(bench/drift.py) and /metrics render time (bench/metrics_render.py); then prints the figures
against the targets.

Before each part the machine's other activity is measured: the CPU busy (in cores, over 3 s,
from /proc/stat) while nothing of ours runs, and the 1-minute load average (which still
carries the tail of our own previous part). `--wait-quiet MINUTES` waits, before each part,
until the other activity is under 0.25 cores (for at most MINUTES in all); the figures are
printed next to each result either way. `--quick` shortens every run, for trying the harness
out (its figures are rough).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench import drift, idle, metrics_render, soak, startup, throughput
from bench.common import PINNING, event_loop, stop_on_sigterm, workdir

T = TypeVar("T")
QUIET_CORES = 0.25
COMMANDS = {
    "throughput": "bench/throughput.py",
    "idle": "bench/idle.py",
    "soak": "bench/soak.py",
    "startup": "bench/startup.py --runs 21 --rss-after 0",
    "drift": "bench/drift.py",
    "metrics": "bench/metrics_render.py",
}


def busy_cores(seconds: float = 3.0) -> float:
    """How many cores were busy (user, nice, system, irq, softirq, steal) over `seconds`."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle_ = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle_, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)


class Sections:
    """Runs each part after checking (and, if asked, waiting for) a quiet machine."""

    def __init__(self, wait_minutes: float) -> None:
        self.deadline = time.monotonic() + wait_minutes * 60
        self.wait = wait_minutes > 0
        self.conditions: dict[str, str] = {}

    def run(self, name: str, work: Callable[[], T]) -> T:
        """Measure the machine, maybe wait for quiet, then run `work`."""
        busy = busy_cores()
        while self.wait and busy >= QUIET_CORES and time.monotonic() < self.deadline:
            print(f"{name}: other activity {busy:.2f} cores: waiting", flush=True)
            time.sleep(30)
            busy = busy_cores()
        load = os.getloadavg()[0]
        self.conditions[name] = f"{busy:.2f} / {load:.2f}"
        print(f"{name}: other activity {busy:.2f} cores, load {load:.2f}", flush=True)
        return work()


def mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (rough figures)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    stop_on_sigterm()
    quick = args.quick
    tmp = workdir()
    parts = Sections(args.wait_quiet)

    rows = parts.run(
        "throughput",
        lambda: throughput.measure(
            seconds=3 if quick else 10, rounds=1 if quick else 3, tmp=tmp / "throughput"
        ),
    )
    print(throughput.table(rows), flush=True)
    idle_fig = parts.run(
        "idle", lambda: idle.measure(seconds=10 if quick else 60, tmp=tmp / "idle")
    )
    print(idle_fig.line(), flush=True)
    soaked = soak.figures(
        parts.run(
            "soak",
            lambda: soak.run(
                rounds=3000 if quick else 20000,
                warmup=1000 if quick else 1500,
                within=60 if quick else 400,
                tmp=tmp / "soak",
            ),
        )
    )
    print("\n".join(soaked.lines()), flush=True)
    started = parts.run(
        "startup",
        lambda: startup.measure(runs=5 if quick else 21, rss_after=0, tmp=tmp / "startup"),
    )
    print("\n".join(started.lines()), flush=True)
    drifted = parts.run(
        "drift", lambda: drift.measure(intervals=1000, interval=0.01, tmp=tmp / "drift")
    )
    print(drifted.line(), flush=True)
    render = parts.run(
        "metrics", lambda: metrics_render.measure(seconds=3 if quick else 5, tmp=tmp / "metrics")
    )
    print(render.line(), flush=True)

    by = {(r.target, r.path): r.result for r in rows}
    side, bare = by[("sidecar", "/ready")], by[("bare aiohttp", "/ready")]
    health = by[("sidecar", "/health")]
    status_quo = by[("probe per request", "/health")]
    ratio = side.rps / bare.rps
    live = sorted(started.live_ms)[len(started.live_ms) // 2]
    ready = sorted(started.ready_ms)[len(started.ready_ms) // 2]
    flat = abs(soaked.fds_end - soaked.fds_start) <= 3
    flat = flat and soaked.threads_start == soaked.threads_end
    figures = [
        (
            "`/ready` throughput vs bare aiohttp",
            f"{side.rps:,.0f} vs {bare.rps:,.0f} req/s = {ratio:.2f}x",
            ">= 0.9x",
            mark(ratio >= 0.9),
            "throughput",
        ),
        (
            "`/ready` p99 latency, 50 connections",
            f"{side.p99_ms:.2f} ms (bare aiohttp: {bare.p99_ms:.2f} ms)",
            "< 3 ms",
            mark(side.p99_ms < 3),
            "throughput",
        ),
        (
            "`/health` throughput, p99",
            f"{health.rps:,.0f} req/s, {health.p99_ms:.2f} ms",
            "-",
            "-",
            "throughput",
        ),
        (
            "status quo: probes on every request (20 ms dependency)",
            f"{status_quo.rps:,.0f} req/s, p50 {status_quo.p50_ms:.1f} ms",
            "-",
            "-",
            "throughput",
        ),
        (
            "RSS at idle, 10 checks at 10 s",
            f"{idle_fig.rss_mb:.1f} MB",
            "< 60 MB",
            mark(idle_fig.rss_mb < 60),
            "idle",
        ),
        (
            f"CPU at idle, 10 checks at 10 s ({idle_fig.seconds:.0f} s)",
            f"{idle_fig.cpu_percent:.2f}% of a core",
            "< 0.5%",
            mark(idle_fig.cpu_percent < 0.5),
            "idle",
        ),
        (
            f"RSS after the soak ({soaked.rounds:,.0f} rounds of 4 checks at 10 ms)",
            f"{soaked.rss_end_mb:.1f} MB",
            "< 60 MB",
            mark(soaked.rss_end_mb < 60),
            "soak",
        ),
        (
            "RSS slope over the soak, after the warm-up",
            f"{soaked.slope_kb_per_1000_rounds:+.1f} KiB per 1,000 rounds",
            "flat",
            "-",
            "soak",
        ),
        (
            "open fds / threads, soak start -> end",
            f"{soaked.fds_start:.0f} -> {soaked.fds_end:.0f} / "
            f"{soaked.threads_start} -> {soaked.threads_end}; crashes {soaked.crashes:.0f}",
            "flat",
            mark(flat),
            "soak",
        ),
        (
            f"start -> `/live` 200, median of {len(started.live_ms)}",
            f"{live:.0f} ms (worst {max(started.live_ms):.0f})",
            "< 500 ms",
            mark(live < 500),
            "startup",
        ),
        (
            f"start -> `/ready` 200, median of {len(started.ready_ms)}",
            f"{ready:.0f} ms",
            "-",
            "-",
            "startup",
        ),
        (
            "scheduler drift over 1,000 intervals of 10 ms",
            f"{drifted.total_ms:+.1f} ms in all; a run starts late by p99 "
            f"{drifted.late_p99_ms:.2f} ms",
            "-",
            "-",
            "drift",
        ),
        (
            "`/metrics` render, 50 checks",
            f"{render.render_p50_ms:.1f} ms (p99 {render.render_p99_ms:.1f}); over HTTP p50 "
            f"{render.http_p50_ms:.1f} ms",
            "-",
            "-",
            "metrics",
        ),
    ]
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, event loop "
        f"{event_loop()}"
        + ("; servers under test on CPU 0, wrk on CPU 1." if PINNING else ".")
        + " Other activity before each part: CPU busy in cores (3 s, nothing of ours running)"
        + " / 1-minute load.",
        "",
        "| figure | measured | target | met? | other activity | reproduce |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {a} | {b} | {c} | {d} | {parts.conditions[part]} | `{COMMANDS[part]}` |"
            for a, b, c, d, part in figures
        ),
        "",
        throughput.table(rows),
    ]
    text = "\n".join(lines)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
