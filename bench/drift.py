"""Scheduler drift over 1,000 intervals, seen from outside.

    .venv/bin/python bench/drift.py [--intervals 1000] [--interval 0.01]

The daemon gets one `http` check (no jitter) pointed at a recorder (bench/servers.py recorder)
that notes when each probe arrives. The arrivals are compared with the ideal schedule that
starts at the first of them: the total drift after N intervals, and how late each run was.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    checks_json,
    daemon,
    daemon_env,
    fetch,
    server,
    stand_ins,
    stop_on_sigterm,
    workdir,
)

SKIP = 5  # the first runs overlap the daemon's start


@dataclass(frozen=True)
class Drift:
    """Drift figures, in milliseconds."""

    intervals: int
    interval_ms: float
    total_ms: float
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    gap_p99_ms: float

    def line(self) -> str:
        """One line for the results."""
        return (
            f"drift over {self.intervals} x {self.interval_ms:g} ms: {self.total_ms:+.1f} ms in "
            f"all; each run late by p50 {self.late_p50_ms:.2f} / p99 {self.late_p99_ms:.2f} / "
            f"max {self.late_max_ms:.2f} ms; p99 gap between runs {self.gap_p99_ms:.2f} ms"
        )


def analyse(arrivals: list[float], intervals: int, interval: float) -> Drift:
    """Compare `intervals` + 1 arrivals with the ideal schedule starting at the first."""
    runs = arrivals[: intervals + 1]
    start = runs[0]
    late = sorted((t - (start + i * interval)) * 1000 for i, t in enumerate(runs))
    gaps = sorted((b - a) * 1000 for a, b in itertools.pairwise(runs))
    return Drift(
        intervals=intervals,
        interval_ms=interval * 1000,
        total_ms=(runs[-1] - start - intervals * interval) * 1000,
        late_p50_ms=statistics.median(late),
        late_p99_ms=late[int(0.99 * (len(late) - 1))],
        late_max_ms=late[-1],
        gap_p99_ms=gaps[int(0.99 * (len(gaps) - 1))],
    )


def measure(*, intervals: int, interval: float, tmp: Path | None = None) -> Drift:
    """Run the daemon with one jitter-free check against the recorder; analyse arrivals."""
    tmp = workdir(tmp)
    with stand_ins(tmp) as peers, server("recorder", tmp) as recorder:
        check = {
            "name": "drift",
            "kind": "http",
            "target": recorder.url + "/probe",
            "interval": interval,
            "timeout": interval,
            "jitter": 0,
        }
        env = daemon_env(peers.convex.url, peers.dep.url, SIDECAR_CHECKS=checks_json([check]))
        with daemon(env, tmp / "daemon.log"):
            deadline = time.monotonic() + intervals * interval * 3 + 30
            arrivals: list[float] = []
            while time.monotonic() < deadline:
                arrivals = json.loads(fetch(recorder.url + "/_times")[1])
                if len(arrivals) > intervals + SKIP:
                    break
                time.sleep(0.5)
    if len(arrivals) <= intervals + SKIP:
        raise RuntimeError(f"only {len(arrivals)} probe runs arrived")
    return analyse(arrivals[SKIP:], intervals, interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--intervals", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    stop_on_sigterm()
    print(measure(intervals=args.intervals, interval=args.interval).line())


if __name__ == "__main__":
    main()
