"""Time from process start to /live and to /ready, and RSS after a while.

    .venv/bin/python bench/startup.py [--runs 5] [--rss-after 60] [--importtime]

Runs dev/convex-local and the real Mastra of dev/mastra on loopback, then starts the daemon
`--runs` times (seed config: convex + mastra, default intervals) and reports the median and
worst times; the last run is kept for `--rss-after` seconds and its RSS read from /proc.
`--importtime` also runs one daemon under `python -X importtime` and lists the imports that
took longest before it listened (where the start time goes).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import SECRET, stop_on_sigterm, workdir
from tests.support import daemon as harness
from tests.support import procs
from tests.support.measure import rss_kb


@dataclass(frozen=True)
class Startup:
    """Milliseconds from `exec` to the first 200; RSS in MB (0 when not measured)."""

    live_ms: list[float]
    ready_ms: list[float]
    rss_mb: float

    def lines(self) -> list[str]:
        """Human-readable lines."""
        out = []
        for label, times in (("/live ", self.live_ms), ("/ready", self.ready_ms)):
            out.append(
                f"start -> {label}: median {statistics.median(times):.0f} ms, "
                f"worst {max(times):.0f} ms ({len(times)} runs)"
            )
        if self.rss_mb:
            out.append(f"RSS after the wait: {self.rss_mb:.1f} MB")
        return out


def status(port: int, path: str) -> int:
    """The status of GET `path` on 127.0.0.1:`port` (0: no answer), over a raw socket so the
    poller itself costs little."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def one_run(
    env: dict[str, str], log: Path, argv: list[str] | None = None
) -> tuple[float, float, subprocess.Popen[bytes]]:
    """Start the daemon; (seconds to /live 200, seconds to /ready 200, the process)."""
    started = time.monotonic()
    proc = harness.spawn_daemon(env, log, command=argv)
    popen, port = proc.popen, proc.port
    live = ready = 0.0
    deadline = started + 30
    while time.monotonic() < deadline and not ready:
        if popen.poll() is not None:
            raise RuntimeError(f"daemon exited with {popen.returncode}: {log.read_text()}")
        if not live and status(port, "/live") == 200:
            live = time.monotonic() - started
        if live and status(port, "/ready") == 200:
            ready = time.monotonic() - started
        time.sleep(0.002)
    if not ready:
        procs.stop_process(popen)
        raise RuntimeError(f"daemon not ready within 30 s: {log.read_text()}")
    return live, ready, popen


def importtime(env: dict[str, str], log: Path, top: int = 15) -> list[str]:
    """The imports with the largest cumulative time in one daemon start (`-X importtime`)."""
    argv = [sys.executable, "-X", "importtime", *harness.RUN]
    _, _, popen = one_run(env, log, argv)
    procs.stop_process(popen)
    rows = []
    for line in log.read_text().splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, own, total, name = (part.strip() for part in line.replace(":", "|", 1).split("|"))
        if total.isdigit():
            depth = (len(line.split("|")[2]) - len(line.split("|")[2].lstrip())) // 2
            rows.append((int(total), int(own), depth, name))
    rows.sort(reverse=True)
    return [
        f"{total / 1000:7.1f} ms cumulative {own / 1000:6.1f} ms self  {name}"
        for total, own, _, name in rows[:top]
    ]


def measure(
    *, runs: int, rss_after: float, tmp: Path | None = None, trace: bool = False
) -> Startup:
    """Start the stand-ins, then the daemon `runs` times; returns the figures."""
    tmp = workdir(tmp)
    with (
        procs.convex_local(tmp / "convex.log", SECRET) as convex,
        procs.mastra(tmp / "mastra.log") as mastra,
    ):
        env = {
            "CONVEX_URL": convex.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": "bench",
            "SIDECAR_DRAIN_SECONDS": "0",
        }
        if trace:
            for line in importtime(env, tmp / "importtime.log"):
                print(line)
        lives, readies = [], []
        rss = 0.0
        for i in range(runs):
            live, ready, popen = one_run(env, tmp / f"daemon-{i}.log")
            lives.append(live * 1000)
            readies.append(ready * 1000)
            if i == runs - 1 and rss_after:
                time.sleep(rss_after)
                rss = rss_kb(popen.pid) / 1024
            procs.stop_process(popen)
    return Startup(live_ms=lives, ready_ms=readies, rss_mb=rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rss-after", type=float, default=60.0)
    parser.add_argument("--importtime", action="store_true")
    args = parser.parse_args()
    stop_on_sigterm()
    result = measure(runs=args.runs, rss_after=args.rss_after, trace=args.importtime)
    for line in result.lines():
        print(line)


if __name__ == "__main__":
    main()
