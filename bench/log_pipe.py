"""`/ready` latency while the daemon logs, with its stdout read (a log driver that keeps up)
and with its stdout a pipe nobody reads (a log driver that stopped): then the writer thread is
stuck in its write, the queue is full, and every new line is dropped and counted.

    .venv/bin/python bench/log_pipe.py [--seconds 10] [--rounds 3] [--lines-per-second 200]

Two daemons (the seed's checks against dev/convex-local and the 20 ms stand-in,
SIDECAR_LOG_LEVEL=debug) run side by side: one's stdout is a pipe this script reads and
discards, the other's a pipe nobody reads, filled first (malformed requests until
`sidecar_log_lines_dropped_total` rises). While wrk (one thread, 50 connections) measures
`/ready`, a client sends malformed requests at `--lines-per-second` to the same daemon: aiohttp
logs each at debug level, one log line each. The two take turns for `--rounds` rounds (the
row is the round with the median throughput). With two or more cores the daemons run on
CPU 0 and wrk on CPU 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    LOAD_CPU,
    SERVER_CPU,
    daemon,
    daemon_env,
    fetch,
    median_run,
    stand_ins,
    stop_on_sigterm,
    workdir,
)
from bench.run_all import busy_cores
from tests.support import procs
from tests.support.daemon import unread
from tests.support.measure import WrkResult, run_wrk

DROPPED = "sidecar_log_lines_dropped_total"
MODES = ("stdout read", "stdout not read")


@dataclass(frozen=True)
class Row:
    """One mode measured by wrk: its result, the log lines asked for and those dropped."""

    mode: str
    result: WrkResult
    lines: int
    dropped: float


class BadRequests:
    """Malformed requests to a daemon at a steady rate, from a thread, for a block: each is
    one debug log line of the daemon's."""

    def __init__(self, port: int, per_second: float) -> None:
        self._port = port
        self._period = 1.0 / per_second
        self._stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        """Send until stopped, on an absolute schedule."""
        next_at = time.monotonic()
        while not self._stop.is_set():
            send_bad_request(self._port)
            self.sent += 1
            next_at += self._period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    @contextlib.contextmanager
    def running(self) -> Iterator[BadRequests]:
        thread = threading.Thread(target=self.run, name="bad-requests")
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(10)


def send_bad_request(port: int) -> None:
    """One malformed request; waits for the daemon's 400."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        sock.recv(1024)


def dropped(url: str) -> float:
    """The daemon's `sidecar_log_lines_dropped_total`."""
    for line in fetch(url + "/metrics")[1].decode().splitlines():
        if line.startswith(DROPPED + " "):
            return float(line.split()[1])
    raise RuntimeError(f"{DROPPED} is not on {url}/metrics")


def fill(url: str, port: int, read_end: int) -> None:
    """Log until the pipe and the queue are full: the drop counter rises (at most 20,000
    lines)."""
    for _ in range(200):
        for _ in range(100):
            send_bad_request(port)
        if dropped(url) > 0:
            print(f"stdout not read: {unread(read_end):,} bytes wait in its pipe", flush=True)
            return
    raise RuntimeError("20,000 log lines and nothing dropped: is the pipe read?")


@contextlib.contextmanager
def drained(read_end: int) -> Iterator[None]:
    """A thread reads the pipe and discards what it reads (a log driver that keeps up) until
    its write end closes."""

    def drain() -> None:
        while os.read(read_end, 65536):
            pass

    thread = threading.Thread(target=drain, name="log-driver", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(5)


def measure(
    *, seconds: float, rounds: int, per_second: float, tmp: Path | None = None
) -> list[Row]:
    """wrk against `/ready` of both daemons in turn; one row per mode."""
    tmp = workdir(tmp)
    runs: dict[str, list[Row]] = {}
    read_pipe, stuck_pipe = os.pipe(), os.pipe()
    open_fds = {*read_pipe, *stuck_pipe}

    def close(fd: int) -> None:
        open_fds.discard(fd)
        os.close(fd)

    try:
        with stand_ins(tmp) as peers, drained(read_pipe[0]):
            env = daemon_env(peers.convex.url, peers.dep.url, SIDECAR_LOG_LEVEL="debug")
            with (
                daemon(
                    env, tmp / "read.log", cpu=SERVER_CPU, wait="ready", stdout=read_pipe[1]
                ) as read,
                daemon(
                    env, tmp / "stuck.log", cpu=SERVER_CPU, wait="ready", stdout=stuck_pipe[1]
                ) as stuck,
            ):
                # The daemons hold the write ends now: the reader sees the end of its pipe
                # when its daemon exits.
                close(read_pipe[1])
                close(stuck_pipe[1])
                fill(stuck.url, stuck.port, stuck_pipe[0])
                targets = dict(zip(MODES, (read, stuck), strict=True))
                for n in range(rounds):
                    for mode, proc in targets.items():
                        row = once(proc, mode, seconds=seconds, per_second=per_second)
                        runs.setdefault(mode, []).append(row)
                        r = row.result
                        print(
                            f"round {n + 1}, {mode}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms,"
                            f" p99 {r.p99_ms:.2f} ms, {row.lines:,} lines, {row.dropped:,.0f}"
                            " dropped",
                            flush=True,
                        )
    finally:
        for fd in sorted(open_fds):
            close(fd)
    return [median_run(rows, lambda r: r.result.rps) for rows in runs.values()]


def once(proc: procs.Proc, mode: str, *, seconds: float, per_second: float) -> Row:
    """One wrk run against `/ready` while the daemon logs `per_second` lines."""
    run_wrk(proc.url + "/ready", connections=50, threads=1, seconds=1, cpu=LOAD_CPU)  # warm up
    before = dropped(proc.url)
    with BadRequests(proc.port, per_second).running() as lines:
        result = run_wrk(
            proc.url + "/ready", connections=50, threads=1, seconds=seconds, cpu=LOAD_CPU
        )
    return Row(mode, result, lines.sent, dropped(proc.url) - before)


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| stdout | req/s | p50 ms | p99 ms | max ms | errors | log lines | dropped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        r = row.result
        lines.append(
            f"| {row.mode} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} "
            f"| {sum(r.socket_errors.values())} | {row.lines:,} | {row.dropped:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lines-per-second", type=float, default=200)
    args = parser.parse_args()
    stop_on_sigterm()
    busy, load = busy_cores(), os.getloadavg()[0]
    rows = measure(seconds=args.seconds, rounds=args.rounds, per_second=args.lines_per_second)
    print(table(rows))
    print(f"other activity before the run: {busy:.2f} cores busy, load average {load:.2f}")


if __name__ == "__main__":
    main()
