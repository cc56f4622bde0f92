"""Every benchmark, side by side in one run on this machine, and the results table.

    .venv/bin/python bench/run_all.py [--quick] [--wait-quiet 30] [--markdown FILE]

Runs, one after the other: throughput and latency (bench/throughput.py: the sidecar, a bare
aiohttp handler, a probe-per-request handler), idle RSS and CPU (bench/idle.py), the full soak
(bench/soak.py), start to /live and /ready (bench/startup.py), scheduler drift
(bench/drift.py) and /metrics render time (bench/metrics_render.py); then prints the figures
against the targets. `--wait-quiet MINUTES` first waits (polling every minute) until the
1-minute load average is under 0.5; the load is printed next to the results either way.
`--quick` shortens every run, for trying the harness out (the figures are then rough).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import drift, idle, metrics_render, soak, startup, throughput
from bench.common import PINNING, event_loop, stop_on_sigterm, workdir

QUIET = 0.5


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def wait_quiet(minutes: float) -> None:
    """Poll the load every minute until it is under QUIET, for at most `minutes`."""
    deadline = time.monotonic() + minutes * 60
    while load() >= QUIET and time.monotonic() < deadline:
        print(f"load {load():.2f} >= {QUIET}: waiting", flush=True)
        time.sleep(60)


def mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (rough figures)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="MINUTES")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    quick = args.quick
    tmp = workdir()
    loads = [load()]
    print(f"load at start {loads[0]:.2f}", flush=True)

    rows = throughput.measure(
        seconds=3 if quick else 10, rounds=1 if quick else 3, tmp=tmp / "throughput"
    )
    print(throughput.table(rows), flush=True)
    loads.append(load())
    idle_fig = idle.measure(seconds=10 if quick else 60, tmp=tmp / "idle")
    print(idle_fig.line(), flush=True)
    loads.append(load())
    soaked = soak.figures(
        soak.run(
            rounds=3000 if quick else 20000,
            warmup=1000 if quick else 1500,
            within=60 if quick else 400,
            tmp=tmp / "soak",
        )
    )
    print("\n".join(soaked.lines()), flush=True)
    loads.append(load())
    started = startup.measure(runs=5 if quick else 21, rss_after=0, tmp=tmp / "startup")
    print("\n".join(started.lines()), flush=True)
    drifted = drift.measure(intervals=1000, interval=0.01, tmp=tmp / "drift")
    print(drifted.line(), flush=True)
    render = metrics_render.measure(seconds=3 if quick else 5, tmp=tmp / "metrics")
    print(render.line(), flush=True)
    loads.append(load())

    by = {(r.target, r.path): r.result for r in rows}
    side = by[("sidecar", "/ready")]
    bare = by[("bare aiohttp", "/ready")]
    ratio = side.rps / bare.rps
    live = sorted(started.live_ms)[len(started.live_ms) // 2]
    ready = sorted(started.ready_ms)[len(started.ready_ms) // 2]
    status_quo = by[("probe per request", "/health")]
    health = by[("sidecar", "/health")]
    figures = [
        (
            "`/ready` throughput vs bare aiohttp (50 conn.)",
            f"{side.rps:,.0f} vs {bare.rps:,.0f} req/s = {ratio:.2f}x",
            ">= 0.9x",
            mark(ratio >= 0.9),
        ),
        (
            "`/ready` p99 latency (50 conn.)",
            f"{side.p99_ms:.2f} ms",
            "< 3 ms",
            mark(side.p99_ms < 3),
        ),
        (
            "`/health` throughput, p99 (50 conn.)",
            f"{health.rps:,.0f} req/s, {health.p99_ms:.2f} ms",
            "-",
            "-",
        ),
        (
            "status quo `/api/health` (probes per request, 20 ms dep.)",
            f"{status_quo.rps:,.0f} req/s, p50 {status_quo.p50_ms:.1f} ms",
            "-",
            "-",
        ),
        (
            "RSS at idle, 10 checks at 10 s",
            f"{idle_fig.rss_mb:.1f} MB",
            "< 60 MB",
            mark(idle_fig.rss_mb < 60),
        ),
        (
            "CPU at idle, 10 checks at 10 s",
            f"{idle_fig.cpu_percent:.2f}% of a core",
            "< 0.5%",
            mark(idle_fig.cpu_percent < 0.5),
        ),
        (
            f"RSS after the soak ({soaked.rounds:,.0f} rounds at 10 ms)",
            f"{soaked.rss_end_mb:.1f} MB",
            "< 60 MB",
            mark(soaked.rss_end_mb < 60),
        ),
        (
            "RSS slope over the soak (after warm-up)",
            f"{soaked.slope_kb_per_1000_rounds:+.1f} KiB per 1,000 rounds",
            "flat",
            "-",
        ),
        (
            "open fds / threads, soak start -> end",
            f"{soaked.fds_start:.0f} -> {soaked.fds_end:.0f} / {soaked.threads_start} -> "
            f"{soaked.threads_end}",
            "flat",
            mark(
                abs(soaked.fds_end - soaked.fds_start) <= 3
                and soaked.threads_start == soaked.threads_end
            ),
        ),
        ("start -> `/live` 200 (median)", f"{live:.0f} ms", "< 500 ms", mark(live < 500)),
        ("start -> `/ready` 200 (median)", f"{ready:.0f} ms", "-", "-"),
        (
            "scheduler drift over 1,000 x 10 ms",
            f"{drifted.total_ms:+.1f} ms; each run late p99 {drifted.late_p99_ms:.2f} ms",
            "-",
            "-",
        ),
        (
            "`/metrics` render with 50 checks",
            f"{render.render_p50_ms:.1f} ms (p99 {render.render_p99_ms:.1f}); over HTTP p50 "
            f"{render.http_p50_ms:.1f} ms",
            "-",
            "-",
        ),
    ]
    lines = [
        f"Machine: {os.cpu_count()} cores, Python {platform.python_version()}, event loop "
        f"{event_loop()}; 1-minute load {min(loads):.2f}-{max(loads):.2f} during the run"
        + ("; servers on CPU 0, wrk on CPU 1." if PINNING else "."),
        "",
        "| figure | measured | target | met? |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in figures),
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
