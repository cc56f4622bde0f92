"""Slow clients against a real running daemon: hundreds of half-sent requests held open (a
slowloris, from a process of its own) must not slow `/ready` down or leak file descriptors, and
a client that never finishes its request must not hold a connection for long."""

from __future__ import annotations

import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

import pytest

from tests.support import procs, rawhttp
from tests.support.abuse import Daemon, assert_clean_logs

pytestmark = [pytest.mark.serial, pytest.mark.slow]

SLOW_CLIENTS = 300
REQUESTS = 250
P99_LIMIT = 0.050
FD_SLACK = 8  # probes of the daemon's own come and go
STALL_LIMIT = 20.0  # seconds a half-sent request may hold a connection (suggested fix: 10)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99 + 0.5) - 1)]


def steady_fds(daemon: Daemon) -> int:
    """The daemon's fd count at rest: the median of a few samples."""
    samples = []
    for _ in range(5):
        samples.append(daemon.open_fds())
        time.sleep(0.05)
    return int(statistics.median(samples))


def test_slowloris_leaves_ready_fast_and_fds_return(daemon: Daemon) -> None:
    """300 connections each send half a request (half of them trickle a byte a second, half
    stall) and are held open by another process. Meanwhile 250 `/ready` requests, each on a
    fresh connection, all answer 200 `{"ready": true}` with p99 under 50 ms; the daemon really
    holds the slow connections (its fd count rises by about 300); once they close its fd count
    returns to the baseline; the logs stay clean JSON."""
    baseline = steady_fds(daemon)
    attacker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.slowloris",
            daemon.host,
            str(daemon.port),
            str(SLOW_CLIENTS),
            "60",
        ],
        cwd=procs.ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == f"open {SLOW_CLIENTS}"
        deadline = time.monotonic() + 10
        while daemon.open_fds() < baseline + SLOW_CLIENTS * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        held = daemon.open_fds()
        assert held >= baseline + SLOW_CLIENTS * 0.9, (baseline, held)

        timings = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            resp = rawhttp.get(daemon.host, daemon.port, "/ready")
            timings.append(time.perf_counter() - started)
            assert (resp.status, resp.json()) == (200, {"ready": True})
        assert p99(timings) < P99_LIMIT, f"p99 {p99(timings) * 1000:.1f} ms during the attack"
        assert daemon.open_fds() >= baseline + SLOW_CLIENTS * 0.9, "slow clients were dropped"
    finally:
        if attacker.poll() is None:
            os.kill(attacker.pid, signal.SIGTERM)
        out, _ = attacker.communicate(timeout=15)
    assert "closed-by-server" in out, out

    deadline = time.monotonic() + 10
    while daemon.open_fds() > baseline + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.open_fds() <= baseline + FD_SLACK, (baseline, daemon.open_fds())
    assert_clean_logs(daemon.new_log_lines(), "the slowloris")


def test_half_sent_request_does_not_hold_a_connection(daemon: Daemon) -> None:
    """A client that sends a request line and one header and then stalls, and one that keeps
    trickling a byte of a never-ending header every half second, are both disconnected by the
    daemon within STALL_LIMIT seconds (a header read deadline). Without one, each such
    connection holds a file descriptor for aiohttp's default keep-alive timeout (3630 s when the
    daemon uses `web.AppRunner`), so enough slow clients exhaust the fd limit."""
    stalled = socket.create_connection((daemon.host, daemon.port), timeout=5)
    trickler = socket.create_connection((daemon.host, daemon.port), timeout=5)
    try:
        for sock in (stalled, trickler):
            sock.sendall(b"GET /ready HTTP/1.1\r\nHost: sidecar\r\nX-Slow: ")
        open_socks = {stalled, trickler}
        started = time.monotonic()
        while open_socks and time.monotonic() - started < STALL_LIMIT:
            readable, _, _ = select.select(list(open_socks), [], [], 0.5)
            for sock in readable:
                try:
                    data = sock.recv(4096)
                except ConnectionResetError:
                    data = b""
                if not data or data.startswith(b"HTTP/"):  # closed, or a 408/400 then close
                    open_socks.discard(sock)
            if trickler in open_socks:
                try:
                    trickler.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    open_socks.discard(trickler)
        names = {stalled: "stalled", trickler: "trickling"}
        still = sorted(names[s] for s in open_socks)
        assert not still, f"{still} connection(s) still open after {STALL_LIMIT:g}s"
    finally:
        stalled.close()
        trickler.close()
