"""What the benchmarks share: starting the peers and the daemon on loopback, stopping them by
their own PID, and the environment of a daemon pointed at the 20 ms dependency."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support import procs

ROOT = procs.ROOT

SECRET = "bench-secret-0123456789"
SERVERS = str(ROOT / "bench" / "servers.py")
READY_PATHS = {"dep": "/health", "bare": "/ready", "probe": "/ready", "recorder": "/_times"}


def event_loop() -> str:
    """The event loop the daemon runs on, so the peers can run on the same one."""
    try:
        from sidecar import daemon
    except ImportError:
        return "asyncio"
    return "uvloop" if getattr(daemon, "LOOP", "asyncio") == "uvloop" else "asyncio"


def workdir() -> Path:
    """A fresh temporary folder for logs."""
    return Path(tempfile.mkdtemp(prefix="sidecar-bench-"))


@contextlib.contextmanager
def server(mode: str, log_dir: Path, *args: str) -> Iterator[procs.Proc]:
    """Run bench/servers.py MODE on a free port for a block."""
    port = procs.free_port()
    argv = [sys.executable, SERVERS, mode, "--port", str(port), "--loop", event_loop(), *args]
    with procs.running(
        argv, port=port, ready_path=READY_PATHS[mode], log=log_dir / f"{mode}.log"
    ) as proc:
        yield proc


def daemon_env(dep: str, **extra: str) -> dict[str, str]:
    """A daemon whose Convex and Mastra are the 20 ms dependency stand-in at `dep`."""
    return {
        "CONVEX_URL": dep,
        "MASTRA_URL": dep,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": "bench",
        "SIDECAR_LOG_LEVEL": "warning",
        **extra,
    }


def checks_json(checks: Sequence[Mapping[str, Any]]) -> str:
    """SIDECAR_CHECKS for a list of check tables."""
    return json.dumps(list(checks))


@contextlib.contextmanager
def daemon(env: Mapping[str, str], log: Path, *, timeout: float = 30) -> Iterator[procs.Proc]:
    """The real daemon (`python -m sidecar run`) on a free loopback port for a block."""
    port = procs.free_port()
    full = {"SIDECAR_HOST": "127.0.0.1", "SIDECAR_PORT": str(port), **env}
    with procs.running(
        [sys.executable, "-m", "sidecar", "run"],
        port=port,
        ready_path="/live",
        log=log,
        env=full,
        timeout=timeout,
    ) as proc:
        yield proc


def fetch(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """GET `url`: (status, body), HTTP errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_status(url: str, status: int, *, within: float) -> None:
    """Poll `url` until it answers `status`."""
    deadline = time.monotonic() + within
    last = (0, b"")
    while time.monotonic() < deadline:
        last = fetch(url)
        if last[0] == status:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {within}s: {last}")
