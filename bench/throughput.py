"""Throughput and latency of `/ready` and `/health`: the sidecar, a bare aiohttp handler
returning the same bytes (the stack's ceiling) and a handler that probes its dependencies on
every request (the scaling guide's `/api/health`, the status quo), side by side.

    .venv/bin/python bench/throughput.py [--seconds 10] [--rounds 3] [--connections 50]

All three run on loopback against the same 20 ms dependency stand-in (bench/servers.py dep) and
on the same event loop; the sidecar's Convex is dev/convex-local, where it keeps its results
(it syncs once a minute; its `/ready` and `/health` read none of it). wrk (Debian, one thread,
50 connections) drives each in turn: the sidecar and the bare handler alternately for
`--rounds` rounds (the row is the round with the median throughput), then the status quo once.
With two or more cores the server under test runs on CPU 0 and wrk on CPU 1. The sidecar's
rendered variants (`?verbose` and `Accept: application/health+json`) get a row each too.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    daemon,
    daemon_env,
    fetch,
    median_run,
    server,
    stand_ins,
    stop_on_sigterm,
    workdir,
)
from tests.support.measure import WrkResult, run_wrk

PATHS = ("/ready", "/health")
HEALTH_JSON = "Accept: application/health+json"


@dataclass(frozen=True)
class Row:
    """One target and path measured by wrk."""

    target: str
    path: str
    result: WrkResult


def measure(
    *,
    seconds: float,
    rounds: int = 3,
    connections: int = 50,
    threads: int = 1,
    tmp: Path | None = None,
) -> list[Row]:
    """Run wrk against the three targets; returns one row per target and path."""
    tmp = workdir(tmp)
    runs: dict[tuple[str, str], list[WrkResult]] = {}

    def bench(target: str, url: str, path: str, headers: Sequence[str] = ()) -> None:
        def once(duration: float) -> WrkResult:
            return run_wrk(
                url + path.split(" ")[0],
                connections=connections,
                threads=threads,
                seconds=duration,
                headers=headers,
                cpu=LOAD_CPU,
            )

        once(1)  # warm up
        runs.setdefault((target, path), []).append(once(seconds))

    with stand_ins(tmp) as peers:
        dep = peers.dep
        log = tmp / "daemon.log"
        env = daemon_env(peers.convex.url, dep.url)
        with daemon(env, log, cpu=SERVER_CPU, wait="ready") as sidecar:
            ready_body, health_body = fetch(sidecar.url + "/ready")[1], _health_body(sidecar.url)
            with server(
                "bare",
                tmp,
                "--ready-body",
                ready_body.decode(),
                "--health-body",
                health_body.decode(),
                cpu=SERVER_CPU,
            ) as bare:
                for _ in range(rounds):
                    for path in PATHS:
                        bench("sidecar", sidecar.url, path)
                        bench("bare aiohttp", bare.url, path)
            bench("sidecar", sidecar.url, "/health?verbose")
            bench("sidecar", sidecar.url, "/health (health+json)", [HEALTH_JSON])
        with server(
            "probe", tmp, "--convex", dep.url, "--mastra", dep.url, cpu=SERVER_CPU
        ) as probe:
            for path in PATHS:
                bench("probe per request", probe.url, path)
    return [
        Row(target, path, median_run(results, lambda r: r.rps))
        for (target, path), results in runs.items()
    ]


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
    bare = {row.path: row.result.rps for row in rows if row.target == "bare aiohttp"}
    lines = [
        "| target | path | req/s | x bare | p50 ms | p99 ms | max ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        r = row.result
        errors = sum(r.socket_errors.values())
        ratio = f"{r.rps / bare[row.path]:.2f}" if row.path in bare else "-"
        lines.append(
            f"| {row.target} | `{row.path}` | {r.rps:,.0f} | {ratio} | {r.p50_ms:.2f} "
            f"| {r.p99_ms:.2f} | {r.max_ms:.1f} | {errors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    stop_on_sigterm()
    rows = measure(
        seconds=args.seconds,
        rounds=args.rounds,
        connections=args.connections,
        threads=args.threads,
    )
    print(table(rows))


if __name__ == "__main__":
    main()
