"""Endpoint latency measured from a separate process, so the test's own event loop (which also
runs the fault servers) can never be what is slow.

`python -m tests.support.latency URL --rounds N --paths /live,/ready,/health --pause S` sends
N rounds of sequential GETs (one per path) on one keep-alive connection, pausing S seconds
between rounds, and prints one JSON object: per path the sorted latencies (seconds) and the
status codes seen. `measure()` runs it from async code without blocking the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from tests.support.procs import ROOT

DEFAULT_PATHS = ("/live", "/ready", "/health")


@dataclass(frozen=True)
class Latencies:
    """What one path answered: every latency (seconds, sorted) and the statuses."""

    samples: tuple[float, ...]
    statuses: dict[int, int]

    def quantile(self, q: float) -> float:
        """The nearest-rank quantile (q = 0.99 is the p99)."""
        rank = max(1, math.ceil(q * len(self.samples)))
        return self.samples[rank - 1]

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    @property
    def worst(self) -> float:
        return self.samples[-1]


async def measure(
    url: str,
    *,
    rounds: int = 200,
    paths: Sequence[str] = DEFAULT_PATHS,
    pause: float = 0.005,
    within: float = 60.0,
) -> dict[str, Latencies]:
    """Run the measuring process against `url`; its results by path."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.latency",
        url,
        "--rounds",
        str(rounds),
        "--paths",
        ",".join(paths),
        "--pause",
        str(pause),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise AssertionError(f"latency client failed ({proc.returncode}): {err.decode()}")
    raw = json.loads(out)
    return {
        path: Latencies(
            samples=tuple(sorted(entry["samples"])),
            statuses={int(k): v for k, v in entry["statuses"].items()},
        )
        for path, entry in raw.items()
    }


def _run(url: str, rounds: int, paths: Sequence[str], pause: float) -> dict[str, object]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    samples: dict[str, list[float]] = {p: [] for p in paths}
    statuses: dict[str, Counter[int]] = {p: Counter() for p in paths}
    try:
        conn.connect()
        for _ in range(rounds):
            for path in paths:
                started = time.perf_counter()
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                samples[path].append(time.perf_counter() - started)
                statuses[path][resp.status] += 1
            if pause:
                time.sleep(pause)
    finally:
        conn.close()
    report: dict[str, object] = {}
    for p in paths:
        counts: dict[int, int] = dict(statuses[p])
        report[p] = {"samples": samples[p], "statuses": counts}
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS))
    parser.add_argument("--pause", type=float, default=0.005)
    args = parser.parse_args(argv)
    result = _run(args.url, args.rounds, args.paths.split(","), args.pause)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
