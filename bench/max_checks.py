"""The daemon at the largest configuration it accepts: 200 checks adding up to 1,000 probe runs
a second (`--interval 0.2`), or at a calmer pace (`--interval 10`).

    .venv/bin/python bench/max_checks.py [--interval 0.2] [--seconds 30]

199 tcp checks (plus the built-in convex one) probe dev/convex-local's port, which also holds
the results. Measured from separate processes, one request at a time on a keep-alive
connection: `/ready` latency during start-up (from the moment `/live` first answers, while the
first round runs) and during scrapes (while another process fetches `/metrics` back to back),
the time one `/metrics` scrape takes, and the daemon's RSS and CPU over `--seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.common import SECRET, daemon, stop_on_sigterm, workdir
from sidecar.limits import MAX_CHECKS
from tests.support import procs
from tests.support.configs import largest_checks
from tests.support.latency import Latencies, measure
from tests.support.measure import cpu_seconds, rss_kb


def ms(lat: Latencies) -> str:
    """p50, p99 and the worst of some latencies, in ms."""
    p50, p99, worst = (1000 * v for v in (lat.p50, lat.p99, lat.worst))
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, worst {worst:.1f} ms"


async def run(interval: float, seconds: float, logs: Path) -> list[str]:
    lines = []
    with procs.convex_local(logs / "convex.log", SECRET) as convex:
        env = {
            "CONVEX_URL": convex.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": "bench-max",
            "SIDECAR_INTERVAL": str(max(interval, 10.0)),
            "SIDECAR_TIMEOUT": str(min(interval, 2.0)),
            "SIDECAR_LOG_LEVEL": "warning",
            "SIDECAR_DRAIN_SECONDS": "0",
            "SIDECAR_CHECKS": largest_checks(convex.url, interval),
        }
        with daemon(env, logs / "daemon.log") as proc:
            startup = await measure(proc.url, rounds=2000, paths=("/ready",), pause=0.001)
            lines.append(f"/ready during start-up (first 2,000 requests): {ms(startup['/ready'])}")
            scrapes = asyncio.ensure_future(
                measure(proc.url, rounds=100, paths=("/metrics",), pause=0)
            )
            during = await measure(proc.url, rounds=3000, paths=("/ready",), pause=0.001)
            scraped = await scrapes
            lines.append(f"/ready during back-to-back scrapes: {ms(during['/ready'])}")
            lines.append(f"one /metrics scrape: {ms(scraped['/metrics'])}")
            cpu0 = cpu_seconds(proc.popen.pid)
            await asyncio.sleep(seconds)
            cpu = (cpu_seconds(proc.popen.pid) - cpu0) / seconds
            lines.append(
                f"{MAX_CHECKS} checks every {interval:g} s: CPU {cpu * 100:.1f}% of a core, "
                f"RSS {rss_kb(proc.popen.pid) / 1024:.1f} MB (over {seconds:g} s)"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.2, help="every check's interval")
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU and RSS window")
    parser.add_argument("--logs", type=Path, help="where to keep the logs")
    args = parser.parse_args()
    stop_on_sigterm()
    for line in asyncio.run(run(args.interval, args.seconds, workdir(args.logs))):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
