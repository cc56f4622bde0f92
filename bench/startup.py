"""Time from process start to /live and to /ready, and RSS after a while.

    .venv/bin/python bench/startup.py [--runs 5] [--rss-after 60]

Runs dev/convex-local and the real Mastra of dev/mastra on loopback, then starts the daemon
`--runs` times (seed config: convex + mastra, default intervals) and reports the median and
worst times; the last run is kept for `--rss-after` seconds and its RSS read from /proc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import procs

SECRET = "bench-secret-0123456789"


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_run(env: dict[str, str], log: Path) -> tuple[float, float, subprocess.Popen[bytes]]:
    port = procs.free_port()
    full = {**env, "SIDECAR_HOST": "127.0.0.1", "SIDECAR_PORT": str(port)}
    started = time.monotonic()
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run"],
            env={**os.environ, **full},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    live = ready = 0.0
    deadline = started + 30
    while time.monotonic() < deadline and not ready:
        now = time.monotonic()
        if not live and status(base + "/live") == 200:
            live = now - started
        if live and status(base + "/ready") == 200:
            ready = time.monotonic() - started
        time.sleep(0.005)
    return live, ready, popen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rss-after", type=float, default=60.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    cport, mport = procs.free_port(), procs.free_port()
    with (
        procs.running(
            procs.convex_local_argv(),
            port=cport,
            ready_path="/version",
            log=tmp / "convex.log",
            env={"PORT": str(cport), "HEALTH_SIDECAR_SECRET": SECRET},
        ) as convex,
        procs.mastra(tmp / "mastra.log", port=mport) as mastra,
    ):
        env = {
            "CONVEX_URL": convex.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": "bench",
        }
        lives, readies = [], []
        for i in range(args.runs):
            live, ready, popen = one_run(env, tmp / f"daemon-{i}.log")
            lives.append(live)
            readies.append(ready)
            if i < args.runs - 1:
                procs.stop_process(popen)
        for label, times in (("/live ", lives), ("/ready", readies)):
            median, worst = statistics.median(times) * 1000, max(times) * 1000
            print(f"start -> {label}: median {median:.0f} ms, worst {worst:.0f} ms")
        time.sleep(args.rss_after)
        print(f"RSS after {args.rss_after:.0f} s: {rss_mb(popen.pid):.1f} MB")
        procs.stop_process(popen)


if __name__ == "__main__":
    main()
