"""The one way to run the daemon in tests, benchmarks and the demo: `python -m sidecar run` (or
another command of the CLI) as a subprocess in a clean environment, stopped by its own PID.

- `spawn_daemon` starts it on host:port and returns at once;
- `start_daemon` also waits, for `/live` to answer (`wait="live"`, the default: listening) or
  for `/ready` to answer 200 (`wait="ready"`: the first round passed);
- `running_daemon` is `start_daemon` for the duration of a block (`running_daemon_async`
  from async code);
- `stop_at_once` stops it without its drain; `Proc.stop` lets it drain;
- `cli` runs one CLI command (`config`, `fleet`, `drain`, ...) to completion.

The environment is PATH, HOME and what the caller passes (then SIDECAR_HOST/SIDECAR_PORT):
nothing leaks in from the shell that runs the tests.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp

from tests.support import procs

Wait = Literal["live", "ready"]
RUN = ("-m", "sidecar", "run")


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """PATH and HOME from this process, then `env`."""
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return {**base, **env}


def member_env(
    convex_url: str,
    name: str,
    mastra: str,
    *,
    interval: float,
    timeout: float,
    store_interval: float,
    **extra: str,
) -> dict[str, str]:
    """The environment of one daemon of a test fleet: its Convex (the stand-ins' secret), its
    Mastra, its name, the checks' and the store's pace and no drain wait; `extra` on top."""
    return {
        "CONVEX_URL": convex_url,
        "MASTRA_URL": mastra,
        "HEALTH_SIDECAR_SECRET": procs.SECRET,
        "SIDECAR_INSTANCE": name,
        "SIDECAR_INTERVAL": f"{interval:g}",
        "SIDECAR_TIMEOUT": f"{timeout:g}",
        "SIDECAR_STORE_INTERVAL": f"{store_interval:g}",
        "SIDECAR_DRAIN_SECONDS": "0",
        **extra,
    }


def spawn_daemon(
    env: Mapping[str, str],
    log: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    command: Sequence[str] | None = None,
    cwd: Path = procs.ROOT,
    stdout: int | None = None,
) -> procs.Proc:
    """Start the daemon listening on host:port (a free port unless given) and return at once.
    `command` replaces `python -m sidecar run` (an image's CMD, `-X importtime`, `taskset`);
    `stdout` (a file descriptor) takes its stdout, and `log` then gets only stderr."""
    port = port or procs.free_port(host)
    full = {**clean_env(env), "SIDECAR_HOST": host, "SIDECAR_PORT": str(port)}
    argv = list(command) if command is not None else [sys.executable, *RUN]
    popen = procs.spawn(argv, log=log, env=full, cwd=cwd, stdout=stdout)
    return procs.Proc(popen=popen, url=f"http://{host}:{port}", log=log)


def wait_up(proc: procs.Proc, wait: Wait = "live", *, timeout: float = 15.0) -> procs.Proc:
    """Wait until `/live` answers (`live`) or `/ready` answers 200 (`ready`); if it does not,
    stop the daemon and raise with its log."""
    try:
        if wait == "live":
            procs.wait_http(proc.url + "/live", timeout=timeout, popen=proc.popen)
        else:
            procs.wait_http(proc.url + "/ready", timeout=timeout, popen=proc.popen, status=200)
    except BaseException as exc:
        proc.stop()
        raise RuntimeError(f"the daemon on {proc.url} was not {wait}:\n{proc.output()}") from exc
    return proc


def start_daemon(
    env: Mapping[str, str],
    log: Path,
    *,
    wait: Wait = "live",
    timeout: float = 15.0,
    host: str = "127.0.0.1",
    port: int | None = None,
    command: Sequence[str] | None = None,
    cwd: Path = procs.ROOT,
    stdout: int | None = None,
) -> procs.Proc:
    """`spawn_daemon`, then `wait_up`."""
    proc = spawn_daemon(env, log, host=host, port=port, command=command, cwd=cwd, stdout=stdout)
    return wait_up(proc, wait, timeout=timeout)


@contextlib.contextmanager
def running_daemon(env: Mapping[str, str], log: Path, **options: Any) -> Iterator[procs.Proc]:
    """`start_daemon` for the duration of a block; stopped (drained) by its PID at the end."""
    proc = start_daemon(env, log, **options)
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def running_daemon_async(
    env: Mapping[str, str], log: Path, **options: Any
) -> AsyncIterator[procs.Proc]:
    """`running_daemon` from async code: started and stopped in a thread, so that servers in
    the caller's event loop (the proxies in front of its Convex or Mastra) keep answering."""
    proc = await asyncio.to_thread(start_daemon, env, log, **options)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)


def stop_at_once(proc: procs.Proc, timeout: float = 10.0) -> int:
    """Stop a daemon without waiting for its drain: SIGTERM, then the second signal, which
    makes it exit at once (SIGKILL after `timeout`)."""
    popen = proc.popen
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(0.2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
    return proc.stop(timeout)


def cli(
    *args: str, env: Mapping[str, str], timeout: float = 30.0, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m sidecar ARGS` to completion in a clean environment (PATH, HOME and `env`);
    its stdout is captured, or goes to `stdout` (a file descriptor) if given."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=procs.ROOT,
        env=clean_env(env),
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )


async def cli_async(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`cli` without blocking the event loop (fault servers in the test's loop keep serving)."""
    return await asyncio.to_thread(cli, *args, env=env)


def unread(fd: int) -> int:
    """Bytes waiting in the pipe whose read end is `fd` (a daemon's stdout, given as `stdout`)."""
    size = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, size)
    return size[0]


async def get(url: str, within: float = 5.0) -> tuple[int, Any]:
    """GET a JSON endpoint: (status, parsed body). Async, so that fault servers running in
    the test's own event loop keep answering while the test waits."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
        session.get(url) as resp,
    ):
        return resp.status, json.loads(await resp.read() or b"null")


async def wait_for(url: str, status: int, *, within: float) -> float:
    """Poll `url` until it answers `status`; return how long that took."""
    started = time.monotonic()
    deadline = started + within
    last: tuple[int, Any] | None = None
    while time.monotonic() < deadline:
        last = await get(url)
        if last[0] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} within {within}s; last: {last}")


def log_lines(proc: procs.Proc) -> list[dict[str, Any]]:
    """The daemon's stdout as parsed JSON lines (every line must be JSON)."""
    lines = []
    for line in proc.output().splitlines():
        if line.strip():
            lines.append(json.loads(line))
    return lines


async def metrics_text(url: str) -> str:
    """The daemon's `/metrics` page in Prometheus' text format."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


def metric(text: str, series: str) -> float:
    """The value of one series (name and labels exactly as rendered) on a metrics page."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not on the metrics page")
