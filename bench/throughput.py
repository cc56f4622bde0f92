"""Throughput and latency of `/ready` and `/health`: the sidecar, a bare aiohttp handler
returning the same bytes (the stack's ceiling) and a handler that probes its dependencies on
every request (the scaling guide's `/api/health`, the status quo), side by side.

    .venv/bin/python bench/throughput.py [--seconds 10] [--connections 50] [--threads 2]

All three run on loopback against the same 20 ms dependency stand-in (bench/servers.py dep)
and on the same event loop; wrk (Debian) drives each in turn with the same settings.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import daemon, daemon_env, fetch, server, wait_status, workdir
from tests.load.measure import WrkResult, run_wrk

PATHS = ("/ready", "/health")


@dataclass(frozen=True)
class Row:
    """One target and path measured by wrk."""

    target: str
    path: str
    result: WrkResult


def measure(
    *, seconds: float, connections: int, threads: int, tmp: Path | None = None
) -> list[Row]:
    """Run wrk against the three targets, one after the other; returns one row per path."""
    tmp = tmp or workdir()
    rows: list[Row] = []

    def bench(target: str, base: str) -> None:
        for path in PATHS:
            run_wrk(base + path, connections=connections, threads=threads, seconds=1)  # warm
            result = run_wrk(base + path, connections=connections, threads=threads, seconds=seconds)
            rows.append(Row(target, path, result))

    with server("dep", tmp) as dep:
        with daemon(daemon_env(dep.url), tmp / "daemon.log") as sidecar:
            wait_status(sidecar.url + "/ready", 200, within=10)
            ready_body, health_body = fetch(sidecar.url + "/ready")[1], _health_body(sidecar.url)
            bench("sidecar", sidecar.url)
        with server(
            "bare",
            tmp,
            "--ready-body",
            ready_body.decode(),
            "--health-body",
            health_body.decode(),
        ) as bare:
            bench("bare aiohttp", bare.url)
        with server("probe", tmp, "--convex", dep.url, "--mastra", dep.url) as probe:
            bench("probe per request", probe.url)
    return rows


def _health_body(url: str) -> bytes:
    """The sidecar's /health body once every check has passed."""
    deadline = time.monotonic() + 10
    body = b""
    while time.monotonic() < deadline:
        status, body = fetch(url + "/health")
        if status == 200 and b'"status":"ok"' in body:
            return body
        time.sleep(0.1)
    return body


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| target | path | req/s | p50 ms | p99 ms | max ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        r = row.result
        errors = sum(r.socket_errors.values())
        lines.append(
            f"| {row.target} | `{row.path}` | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.max_ms:.1f} | {errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = measure(seconds=args.seconds, connections=args.connections, threads=args.threads)
    print(table(rows))


if __name__ == "__main__":
    main()
