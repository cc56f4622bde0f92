"""`/ready` and `/live` latency at idle and during a flood of witness requests
(`POST /_sidecar/witness`), on the real daemon; and the cost of admitting one signed question.

    .venv/bin/python bench/witness_flood.py [--seconds 10] [--rounds 3000] [--connections 50]

The daemon (dev/convex-local as its Convex, the 20 ms stand-in as its Mastra) runs on CPU 0.
A separate process (tests/support/latency.py) sends `--rounds` sequential GETs of `/live` and
`/ready` on one keep-alive connection, 1 ms apart: once at idle, then while wrk (on CPU 1,
`--connections` connections) floods the witness endpoint with three kinds of question in turn:
unsigned (the rate limit answers 429 after the burst, each after a 1 s tarpit), a genuine
signed question replayed (200 once, then 401 and 429: all from one address), and unsigned on
a new connection per request (`Connection: close`; the tarpit holds at most 1,024 at once).
The target (issue 17): the p99 during a flood is at most 2x the idle p99. In process,
`Door.admit` of a genuine question (rate, HMAC over the body, age, replay table) is timed
too: the work a peer within its rate can cost a witness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import (
    LOAD_CPU,
    SECRET,
    SERVER_CPU,
    daemon,
    daemon_env,
    stand_ins,
    stop_on_sigterm,
    workdir,
)
from sidecar.witness import HEADER, PATH, Buckets, Door, Replays, question
from tests.support.latency import Latencies, measure
from tests.support.measure import parse_wrk, wrk_argv, wrk_script

PATHS = ("/live", "/ready")


def flood_script(body: bytes, headers: dict[str, str]) -> str:
    """wrk's Lua: POST `body` with `headers` on every request, counting statuses."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua(body.decode())}"]
    lines += [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n" + wrk_script(count_statuses=True)


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def flooding(url: str, script: str, *, seconds: float, connections: int) -> Iterator[list[str]]:
    """wrk flooding `url` for the block (it runs `seconds`, longer than the block); the list
    gets wrk's report line once it ends."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        path = Path(tmp) / "flood.lua"
        path.write_text(script)
        argv = wrk_argv(
            url + PATH, path, connections=connections, threads=1, seconds=seconds, cpu=LOAD_CPU
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        report: list[str] = []
        try:
            time.sleep(1.0)  # the flood is on before the measurement starts
            yield report
        finally:
            try:
                out, _ = proc.communicate(timeout=seconds + 30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            report.append(out.decode(errors="replace"))


def latencies(url: str, rounds: int) -> dict[str, Latencies]:
    return asyncio.run(measure(url, rounds=rounds, paths=PATHS, pause=0.001, within=600))


def admit_cost(n: int = 20_000) -> float:
    """Microseconds per admitted genuine question, in process (median of 5 batches)."""
    door = Door(SECRET, buckets=Buckets(rate=1e9, burst=1e9), replays=Replays(size=n))
    asked = [question(SECRET, instance="web-2", checks=["convex", "mastra"]) for _ in range(n)]
    per: list[float] = []
    for batch in range(5):
        part = asked[batch * n // 5 : (batch + 1) * n // 5]
        started = time.perf_counter()
        for body, headers in part:
            door.admit(address="10.0.0.2", signed=headers[HEADER], body=body)
        per.append((time.perf_counter() - started) / len(part) * 1e6)
    return sorted(per)[2]


def row(name: str, by_path: dict[str, Latencies], extra: str = "") -> str:
    cells = " | ".join(
        f"{1000 * by_path[p].p50:.2f} / {1000 * by_path[p].p99:.2f} / {1000 * by_path[p].worst:.1f}"
        for p in PATHS
    )
    return f"| {name} | {cells} | {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    stop_on_sigterm()
    tmp = workdir()
    rows = []
    with stand_ins(tmp) as peers:
        env = daemon_env(peers.convex.url, peers.dep.url)
        with daemon(env, tmp / "daemon.log", cpu=SERVER_CPU, wait="ready") as sidecar:
            latencies(sidecar.url, 200)  # warm up
            idle = latencies(sidecar.url, args.rounds)
            rows.append(row("idle", idle))
            floods = {
                "unsigned flood": (b'{"instance":"x"}', {"Content-Type": "application/json"}),
                "replayed signed question": question(SECRET, instance="web-2", checks=["convex"]),
                "unsigned, a new connection each": (
                    b'{"instance":"x"}',
                    {"Content-Type": "application/json", "Connection": "close"},
                ),
            }
            for name, (body, headers) in floods.items():
                script = flood_script(body, headers)
                with flooding(
                    sidecar.url, script, seconds=args.seconds, connections=args.connections
                ) as report:
                    during = latencies(sidecar.url, args.rounds)
                wrk = parse_wrk(report[0])
                ratio = during["/ready"].p99 / idle["/ready"].p99
                statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(wrk.statuses.items()))
                extra = f"{wrk.rps:,.0f} req/s ({statuses}); /ready p99 {ratio:.2f}x idle"
                rows.append(row(name, during, extra))
    print("| load | /live p50 / p99 / max ms | /ready p50 / p99 / max ms | witness flood |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    print(f"\nDoor.admit of a genuine question, in process: {admit_cost():.1f} us (median)")


if __name__ == "__main__":
    main()
