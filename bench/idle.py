"""RSS and CPU of the daemon at idle: 10 checks every 10 s, nobody calling it.

    .venv/bin/python bench/idle.py [--seconds 60]

The daemon's Convex is dev/convex-local; Mastra and the eight extra checks (six http, two tcp)
probe the 20 ms dependency stand-in (bench/servers.py dep). After a settle period the daemon's
user + system CPU time is read from /proc/<pid>/stat at the start and end of the window; RSS
from /proc/<pid>/status. The line says whether the daemon's subscription to health:watch was open
(`sidecar_store_subscribed`).
"""

from __future__ import annotations

import argparse
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import checks_json, daemon, daemon_env, stand_ins, stop_on_sigterm, workdir
from tests.support.measure import cpu_seconds, rss_kb

SETTLE = 12.0  # every check has run once and the first report is written


@dataclass(frozen=True)
class Idle:
    """CPU (percent of one core) and RSS (MB) over the window."""

    seconds: float
    cpu_percent: float
    rss_mb: float
    subscribed: str  # the daemon's sidecar_store_subscribed at the end ("absent": none)

    def line(self) -> str:
        """One line for the results."""
        return (
            f"idle, 10 checks at 10 s, over {self.seconds:.0f} s: CPU {self.cpu_percent:.2f}% "
            f"of a core, RSS {self.rss_mb:.1f} MB (sidecar_store_subscribed {self.subscribed})"
        )


def subscribed(url: str) -> str:
    """The daemon's `sidecar_store_subscribed`: 1 while its subscription is open."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        for line in text.splitlines():
            if line.startswith("sidecar_store_subscribed "):
                return line.rpartition(" ")[2]
    return "absent"


def ten_checks(dep: str) -> str:
    """Eight more checks beside the built-in convex and mastra: six http and two tcp."""
    host = dep.removeprefix("http://")
    checks: list[dict[str, object]] = [
        {"name": f"http_{i}", "kind": "http", "target": f"{dep}/health"} for i in range(6)
    ]
    checks += [{"name": f"tcp_{i}", "kind": "tcp", "target": host} for i in range(2)]
    return checks_json(checks)


def measure(*, seconds: float, tmp: Path | None = None) -> Idle:
    """Start the dependency and the daemon; measure the idle window."""
    tmp = workdir(tmp)
    with stand_ins(tmp) as peers:
        dep = peers.dep.url
        env = daemon_env(
            peers.convex.url, dep, SIDECAR_INTERVAL="10", SIDECAR_CHECKS=ten_checks(dep)
        )
        with daemon(env, tmp / "daemon.log", wait="ready") as proc:
            time.sleep(SETTLE)
            pid = proc.popen.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(pid), time.monotonic()
            rss = rss_kb(pid) / 1024
            gauge = subscribed(proc.url)
    return Idle(
        seconds=t1 - t0, cpu_percent=100 * (cpu1 - cpu0) / (t1 - t0), rss_mb=rss, subscribed=gauge
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    stop_on_sigterm()
    print(measure(seconds=args.seconds).line())


if __name__ == "__main__":
    main()
