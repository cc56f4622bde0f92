"""A stdout that is closed (`health-sidecar run | head -1`) or a pipe nobody reads (a log driver
that stopped reading) never stops the daemon: its log lines are dropped and counted, `/live`
and `/ready` answer truthfully, probes go on, and SIGTERM drains and exits 0. A CLI command
with a closed stdout ends quietly with 0."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.daemon import (
    cli,
    get,
    metric,
    metrics_text,
    spawn_daemon,
    unread,
    wait_for,
    wait_up,
)
from tests.support.procs import SECRET

INTERVAL = 1.0
DRAIN_SECONDS = 2.0
WATCH_SECONDS = 7.0  # longer than the 5 s after which a stale heartbeat turns /live 503
PIPE_BYTES = 4096  # the smallest pipe Linux makes: a few dozen log lines fill it
RUNS = 'sidecar_check_runs_total{check="convex",result="pass"}'
DROPPED = "sidecar_log_lines_dropped_total"
REPORT = "health-sidecar: a log line was dropped"


def daemon_env(convex: procs.Proc, mastra: procs.Proc, instance: str) -> dict[str, str]:
    """Both checks pass; debug level, at which aiohttp logs every malformed request."""
    return {
        "CONVEX_URL": convex.url,
        "MASTRA_URL": mastra.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": str(INTERVAL),
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "SIDECAR_LOG_LEVEL": "debug",
    }


async def bad_requests(port: int, count: int) -> None:
    """`count` malformed requests, one per connection: each is a log line of the daemon's."""
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GARBAGE\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(1024), 5)).startswith(b"HTTP/1.0 400")
        finally:
            writer.close()
            await writer.wait_closed()


async def settled(fd: int) -> int:
    """What the pipe whose read end is `fd` holds once that stops changing (within 5 s): more
    than half of it (a log line is about 160 bytes; a write of at most 4 KiB that does not fit
    waits for room, it is not split)."""
    last = -1
    for _ in range(10):
        now = unread(fd)
        if now == last:
            assert now > PIPE_BYTES // 2, f"the pipe holds {now} bytes: not full"
            return now
        last = now
        await asyncio.sleep(0.5)
    raise AssertionError(f"the pipe kept filling: {last} bytes")


async def watch(proc: procs.Proc) -> None:
    """For WATCH_SECONDS, while the daemon keeps logging (a few bad requests a round): `/live`
    and `/ready` answer 200 (both checks pass), probes go on and the drops keep rising."""
    text = await metrics_text(proc.url)
    runs, drops = [metric(text, RUNS)], [metric(text, DROPPED)]
    deadline = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < deadline:
        await bad_requests(proc.port, 20)
        assert (await get(proc.url + "/live"))[0] == 200
        assert (await get(proc.url + "/ready"))[0] == 200
        text = await metrics_text(proc.url)
        runs.append(metric(text, RUNS))
        drops.append(metric(text, DROPPED))
        await asyncio.sleep(0.5)
    assert runs[-1] >= runs[0] + WATCH_SECONDS / INTERVAL - 2, runs
    assert drops[0] > 0
    assert drops[-1] > drops[0], drops


async def drain_and_exit(proc: procs.Proc) -> None:
    """SIGTERM: `/ready` turns 503 (the drain), then the process exits 0 within the drain and
    10 s (if not, the test fails and the caller's `stop` kills it)."""
    os.killpg(proc.popen.pid, signal.SIGTERM)
    await wait_for(proc.url + "/ready", 503, within=DRAIN_SECONDS)
    try:  # no second signal: that would skip the drain
        code = await asyncio.to_thread(proc.popen.wait, DRAIN_SECONDS + 10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0


@pytest.mark.slow
async def test_a_closed_stdout_drops_lines_and_the_daemon_goes_on(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """stdout a pipe closed at once (`| head -1` after its line): the daemon runs as if
    nothing happened, counts the lost lines, says so once on stderr, and drains on SIGTERM."""
    read, write = os.pipe()
    os.close(read)
    env = daemon_env(convex_local, mastra_local, "log-closed")
    proc = spawn_daemon(env, tmp_path / "stderr.log", stdout=write)
    os.close(write)
    await goes_on(proc, "(stdout is closed)")


@pytest.mark.slow
async def test_no_stdout_at_all_drops_lines_and_the_daemon_goes_on(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Started without a stdout (`>&-`): the same, and no socket takes descriptor 1 (uvloop
    would abort the process when it closed it)."""
    env = daemon_env(convex_local, mastra_local, "log-none")
    command = ["sh", "-c", 'exec "$0" -m sidecar run >&-', sys.executable]
    proc = spawn_daemon(env, tmp_path / "stderr.log", command=command)
    await goes_on(proc, "(the process has no stdout)")


async def goes_on(proc: procs.Proc, why: str) -> None:
    """Ready, then `watch`, then `drain_and_exit`; stderr reported the first drop once, with
    `why`, and nothing else went wrong."""
    try:
        wait_up(proc, "ready")
        await watch(proc)
        await drain_and_exit(proc)
    finally:
        proc.stop()
    stderr = proc.output()
    assert stderr.count(REPORT) == 1, stderr
    assert why in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
async def test_a_stdout_nobody_reads_drops_lines_and_the_daemon_goes_on(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """stdout a pipe nobody reads, filled by a burst of lines: the pipe stays full, the
    writer is stuck in its write, and still the daemon answers, probes, counts the lines it
    cannot queue, says so once on stderr, and drains on SIGTERM."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    env = daemon_env(convex_local, mastra_local, "log-unread")
    proc = spawn_daemon(env, tmp_path / "stderr.log", stdout=write)
    os.close(write)
    try:
        wait_up(proc, "ready")
        await bad_requests(proc.port, 1500)  # more than the pipe and the queue hold
        full = await settled(read)
        await watch(proc)
        # Lines were logged (and dropped) all along, and none reached the pipe: the writer
        # is stuck, its next write does not fit.
        assert unread(read) == full, "the pipe was written to, so it was not full"
        await drain_and_exit(proc)
    finally:
        proc.stop()
        os.close(read)
    stderr = proc.output()
    assert stderr.count(REPORT) == 1, stderr
    assert "lines is full: stdout is not read" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("args", [("config",), ("--version",), ("fleet", "--help")])
def test_a_cli_command_with_a_closed_stdout_ends_quietly(args: tuple[str, ...]) -> None:
    """`health-sidecar config | head -1` and the like: exit 0, nothing on stderr."""
    env = {"CONVEX_URL": "http://127.0.0.1:9", "MASTRA_URL": "http://127.0.0.1:9"}
    read, write = os.pipe()
    os.close(read)
    try:
        done = cli(*args, env={**env, "HEALTH_SIDECAR_SECRET": SECRET}, stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
