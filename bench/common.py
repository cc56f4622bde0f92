"""What the benchmarks share: starting the stand-ins and the daemon on loopback, stopping them
by their own PID, CPU pinning, and the environment of a daemon pointed at the stand-ins.

The daemon keeps its results in Convex, so its Convex is always dev/convex-local (the store's
own functions behind Convex's wire format): without it the `convex` check fails and `/ready`
never answers 200. Mastra and the extra checks' targets are the 20 ms dependency stand-in
(`bench/servers.py dep`), or the real Mastra where a benchmark says so.

On a machine with two or more cores, the server under test runs on CPU 0 and wrk on CPU 1
(`taskset`), so the load generator and the server do not take turns on the same core: the
latency then measures the server, not the scheduler. Helpers (the dependency stand-in, the
recorder) are not pinned.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.support import daemon as harness
from tests.support import procs

ROOT = procs.ROOT
SECRET = "bench-secret-0123456789"
SERVERS = str(ROOT / "bench" / "servers.py")
READY_PATHS = {"dep": "/health", "bare": "/ready", "probe": "/ready", "recorder": "/_times"}
PINNING = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CPU = "0" if PINNING else None
LOAD_CPU = "1" if PINNING else None

T = TypeVar("T")


def pinned(argv: Sequence[str], cpu: str | None) -> list[str]:
    """`argv` bound to `cpu` with taskset (which execs it: the PID stays the same)."""
    return ["taskset", "-c", cpu, *argv] if cpu is not None else list(argv)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so every `with` block stops what it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def event_loop() -> str:
    """The event loop the daemon runs on (sidecar/daemon.py), so the peers run on the same."""
    return "uvloop"


def workdir(path: Path | None = None) -> Path:
    """`path` (created if missing), or a fresh temporary folder, for logs."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def server(mode: str, log_dir: Path, *args: str, cpu: str | None = None) -> Iterator[procs.Proc]:
    """Run bench/servers.py MODE on a free port for a block (on `cpu` if given)."""
    port = procs.free_port()
    argv = [sys.executable, SERVERS, mode, "--port", str(port), "--loop", event_loop(), *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    with procs.running(
        pinned(argv, cpu), port=port, ready_path=READY_PATHS[mode], log=log_dir / f"{mode}.log"
    ) as proc:
        yield proc


@dataclass(frozen=True)
class StandIns:
    """dev/convex-local (the daemon's Convex) and the 20 ms dependency (its Mastra)."""

    convex: procs.Proc
    dep: procs.Proc


@contextlib.contextmanager
def stand_ins(log_dir: Path) -> Iterator[StandIns]:
    """dev/convex-local holding SECRET and the 20 ms dependency, for a block."""
    with (
        procs.convex_local(log_dir / "convex.log", SECRET) as convex,
        server("dep", log_dir) as dep,
    ):
        yield StandIns(convex, dep)


def daemon_env(convex: str, mastra: str, **extra: str) -> dict[str, str]:
    """A daemon whose Convex is at `convex` (dev/convex-local holding SECRET) and whose Mastra
    is at `mastra`."""
    return {
        "CONVEX_URL": convex,
        "MASTRA_URL": mastra,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": "bench",
        "SIDECAR_LOG_LEVEL": "warning",
        "SIDECAR_DRAIN_SECONDS": "0",
        **extra,
    }


def checks_json(checks: Sequence[Mapping[str, Any]]) -> str:
    """SIDECAR_CHECKS for a list of check tables."""
    return json.dumps(list(checks))


@contextlib.contextmanager
def daemon(
    env: Mapping[str, str],
    log: Path,
    *,
    cpu: str | None = None,
    wait: harness.Wait = "live",
    timeout: float = 30,
    stdout: int | None = None,
) -> Iterator[procs.Proc]:
    """The real daemon on a free loopback port (on `cpu` if given), live or ready, for a
    block; its stdout to `log`, or to `stdout` (a file descriptor) if given."""
    command = pinned([sys.executable, *harness.RUN], cpu)
    with harness.running_daemon(
        env, log, command=command, wait=wait, timeout=timeout, stdout=stdout
    ) as proc:
        yield proc


def fetch(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET `url`: (status, body), HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def median_run(runs: Sequence[T], rps: Callable[[T], float]) -> T:
    """The run with the median throughput `rps` (the lower middle one for an even count)."""
    ordered = sorted(runs, key=rps)
    return ordered[(len(ordered) - 1) // 2]


async def repeated(
    count: int, one_run: Callable[[], Awaitable[dict[str, float]]]
) -> list[dict[str, float]]:
    """The figures of `count` runs of `one_run`, one after the other, each printed as it ends."""
    results = []
    for n in range(count):
        result = await one_run()
        results.append(result)
        print(f"run {n + 1}: " + ", ".join(f"{k} {v:g}" for k, v in result.items()))
    return results


def median_and_worst(values: Sequence[float]) -> str:
    """`median M  worst W` of some seconds, as the failover benchmarks print them."""
    return f"median {statistics.median(values):5.2f}  worst {max(values):5.2f}"
