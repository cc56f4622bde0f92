"""`/metrics` with 50 checks: render time in process, and served over HTTP.

    .venv/bin/python bench/metrics_render.py [--seconds 5]

In process: a Monitor with 50 checks, each with a result, and `generate_latest` of its
registry, timed over many renders (what the handler spends). Over HTTP: the daemon with 50
checks (all passing: its Convex is dev/convex-local, the rest the 20 ms dependency stand-in),
and wrk with one connection on `/metrics` (what a scraper sees, one request at a time).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    checks_json,
    daemon,
    daemon_env,
    stand_ins,
    stop_on_sigterm,
    workdir,
)
from tests.support.measure import run_wrk

CHECKS = 50


@dataclass(frozen=True)
class Render:
    """Milliseconds."""

    render_p50_ms: float
    render_p99_ms: float
    page_kb: float
    http_p50_ms: float
    http_p99_ms: float

    def line(self) -> str:
        """One line for the results."""
        return (
            f"/metrics with {CHECKS} checks ({self.page_kb:.0f} KB): render p50 "
            f"{self.render_p50_ms:.2f} ms, p99 {self.render_p99_ms:.2f} ms in process; over "
            f"HTTP p50 {self.http_p50_ms:.2f} ms, p99 {self.http_p99_ms:.2f} ms"
        )


def in_process(renders: int = 300) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, page bytes) of `generate_latest` with 50 checks that have results."""
    from prometheus_client import generate_latest

    from sidecar import logs
    from sidecar.checks import HttpCheck
    from sidecar.metrics import Metrics
    from sidecar.monitor import Monitor
    from sidecar.result import CheckResult

    logs.configure(level="error", instance="bench", stream=io.StringIO())
    checks = [
        HttpCheck(name=f"check_{i}", target="http://127.0.0.1:1", interval=10, timeout=2)
        for i in range(CHECKS)
    ]
    metrics = Metrics(checks=[c.name for c in checks], version="0.0.0")
    monitor = Monitor(instance="bench", version="0.0.0", checks=checks, metrics=metrics)
    for check in checks:
        now = time.time()
        monitor.record(check.name, CheckResult("pass", "HTTP 200", latency=0.02, observed_at=now))
    page = generate_latest(metrics.registry)
    times = []
    for _ in range(renders):
        started = time.perf_counter()
        generate_latest(metrics.registry)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))], len(page)


def measure(*, seconds: float, tmp: Path | None = None) -> Render:
    """Both measurements."""
    tmp = workdir(tmp)
    p50, p99, size = in_process()
    with stand_ins(tmp) as peers:
        dep = peers.dep.url
        more = [
            {"name": f"check_{i}", "kind": "http", "target": f"{dep}/health"}
            for i in range(CHECKS - 2)
        ]
        env = daemon_env(peers.convex.url, dep, SIDECAR_CHECKS=checks_json(more))
        with daemon(env, tmp / "daemon.log", cpu=SERVER_CPU, wait="ready") as proc:
            http = run_wrk(
                proc.url + "/metrics", connections=1, threads=1, seconds=seconds, cpu=LOAD_CPU
            )
    return Render(p50, p99, size / 1024, http.p50_ms, http.p99_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    stop_on_sigterm()
    print(measure(seconds=args.seconds).line())


if __name__ == "__main__":
    main()
