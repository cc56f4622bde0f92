"""The full accelerated soak: 20,000 rounds of four checks at a 10 ms interval.

    .venv/bin/python bench/soak.py [--rounds 20000] [--warmup 1500] [--within 400]

Runs dev/convex-local and the real Mastra on loopback and the daemon with four checks
(convex, mastra, an http check of Mastra's /health and a tcp check of Convex's port) every
10 ms, samples its RSS, open file descriptors and threads from /proc, and reports the RSS
slope after the warm-up, the descriptors and threads at the start and end, and crashes.
tests/daemon/load/test_soak.py runs the same soak, reduced, in `make test`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.common import SECRET, daemon, stop_on_sigterm, workdir
from tests.support import procs
from tests.support.soaking import CHECKS, SoakResult, series_sum, soak, soak_env


@dataclass(frozen=True)
class SoakFigures:
    """What the soak reports."""

    rounds: float
    seconds: float
    slope_kb_per_1000_rounds: float
    slope_kb_per_min: float
    rss_start_mb: float
    rss_end_mb: float
    fds_start: float
    fds_end: float
    threads_start: int
    threads_end: int
    crashes: float
    probes: float

    def lines(self) -> list[str]:
        """Human-readable lines."""
        return [
            f"soak: {self.rounds:,.0f} rounds ({self.probes:,.0f} probes) in {self.seconds:.0f} s",
            f"RSS after warm-up {self.rss_start_mb:.1f} MB -> end {self.rss_end_mb:.1f} MB; "
            f"slope {self.slope_kb_per_1000_rounds:+.1f} KiB per 1,000 rounds "
            f"({self.slope_kb_per_min:+.1f} KiB/min)",
            f"open fds (median of 10 samples) {self.fds_start:.0f} -> {self.fds_end:.0f}; "
            f"threads {self.threads_start} -> {self.threads_end}; check loop crashes "
            f"{self.crashes:.0f}",
        ]


def figures(result: SoakResult) -> SoakFigures:
    """Sum up a soak."""
    m = result.measured
    after = result.metrics_after
    return SoakFigures(
        rounds=result.rounds,
        seconds=result.seconds,
        slope_kb_per_1000_rounds=result.rss_slope_kb_per_1000_rounds,
        slope_kb_per_min=result.rss_slope_kb_per_min,
        rss_start_mb=result.window("first", "rss_kb") / 1024,
        rss_end_mb=result.window("last", "rss_kb") / 1024,
        fds_start=result.window("first", "fds"),
        fds_end=result.window("last", "fds"),
        threads_start=m[0].threads,
        threads_end=m[-1].threads,
        crashes=series_sum(after, "sidecar_check_crashes_total"),
        probes=series_sum(after, "sidecar_check_runs_total")
        - series_sum(result.metrics_before, "sidecar_check_runs_total"),
    )


def run(*, rounds: int, warmup: int, within: float, tmp: Path | None = None) -> SoakResult:
    """Start the stand-ins and the daemon, soak, stop everything; return what it saw."""
    tmp = workdir(tmp)
    with (
        procs.convex_local(tmp / "convex.log", SECRET) as convex,
        procs.mastra(tmp / "mastra.log") as mastra,
    ):
        env = {
            **soak_env(convex.url, mastra.url, SECRET, "bench-soak"),
            "SIDECAR_LOG_LEVEL": "warning",
        }
        with daemon(env, tmp / "daemon.log") as proc:
            result = soak(
                proc.url,
                proc.popen.pid,
                checks=CHECKS,
                rounds=rounds,
                within=within,
                warmup_rounds=warmup,
                sample_every=1.0,
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=1500)
    parser.add_argument("--within", type=float, default=400)
    parser.add_argument("--samples", type=Path, help="write every sample here (CSV)")
    args = parser.parse_args()
    stop_on_sigterm()
    result = run(rounds=args.rounds, warmup=args.warmup, within=args.within)
    if args.samples:
        rows = [f"{s.at:.2f},{s.rounds:.0f},{s.rss_kb},{s.fds},{s.threads}" for s in result.samples]
        args.samples.write_text("seconds,rounds,rss_kb,fds,threads\n" + "\n".join(rows) + "\n")
    for line in figures(result).lines():
        print(line)


if __name__ == "__main__":
    main()
