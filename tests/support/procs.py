"""Start real servers as subprocesses on free loopback ports; stop them by their own PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-0123456789"  # HEALTH_SIDECAR_SECRET of the test session's stand-ins
# HEALTH_SIDECAR_OPERATOR_SECRET of the stand-ins: what the CLI signs drain and fleet with.
OPERATOR_SECRET = "test-operator-secret-0123456789"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A started subprocess, its base URL and where its output goes."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None, self.url
        return port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the process group we started, then SIGKILL after `timeout`."""
        return stop_process(self.popen, timeout)


def stop_process(popen: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Stop a process started with `start_new_session=True` by its own PID (and group)."""
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)
    return popen.returncode


def wait_http(
    url: str,
    *,
    timeout: float,
    popen: subprocess.Popen[bytes] | None = None,
    status: int | None = None,
) -> None:
    """Poll `url` until it answers (`status` if given, else any HTTP status), the process
    dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise RuntimeError(f"process exited with {popen.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                answered = resp.status
        except urllib.error.HTTPError as exc:
            answered = exc.code
        except OSError:
            time.sleep(0.05)
            continue
        if status is None or answered == status:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status or 'at all'} within {timeout}s")


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str],
    cwd: Path = ROOT,
    stdout: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (so it is stopped with its children by its PID) with
    exactly `env`, its output to `log`; return at once. `stdout` (a file descriptor, such as
    a pipe's end) takes stdout instead, and `log` gets only stderr."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=out if stdout is None else stdout,
            stderr=subprocess.STDOUT if stdout is None else out,
            start_new_session=True,
        )


def start(
    argv: Sequence[str],
    *,
    port: int,
    ready_path: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 30.0,
) -> Proc:
    """Start `argv` in its own session, wait until `ready_path` answers on `port`."""
    popen = spawn(argv, log=log, env={**os.environ, **(env or {})}, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + ready_path, timeout=timeout, popen=popen)
    except BaseException as exc:
        stop_process(popen)
        raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text(errors='replace')}") from exc
    return Proc(popen=popen, url=url, log=log)


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, port: int, ready_path: str, log: Path, **kwargs: object
) -> Iterator[Proc]:
    """`start` for the duration of a block."""
    proc = start(argv, port=port, ready_path=ready_path, log=log, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        proc.stop()


def convex_local_argv(root: Path = ROOT) -> list[str]:
    """The command that runs dev/convex-local of the checkout at `root` (what `npm start`
    runs, without npm's overhead)."""
    return [str(ROOT / "node_modules" / ".bin" / "tsx"), str(root / "dev/convex-local/server.ts")]


def mastra_argv() -> list[str]:
    """The command that runs the real Mastra server in dev/mastra (what `npm start` runs)."""
    return ["node", str(ROOT / "dev/mastra/server.mjs")]


def start_convex_local(
    log: Path,
    secret: str = SECRET,
    port: int | None = None,
    root: Path = ROOT,
    functions: str = "repo",
    *,
    operator_secret: str = OPERATOR_SECRET,
) -> Proc:
    """Start dev/convex-local (of the checkout at `root`) holding `secret` (and the
    operator's key, when given) on 127.0.0.1 (a free port unless given), serving the repo's
    functions or (`functions="test"`) the test-only ones of dev/convex-local/testFunctions.ts."""
    port = port or free_port()
    env = {
        "PORT": str(port),
        "HEALTH_SIDECAR_SECRET": secret,
        "HEALTH_SIDECAR_OPERATOR_SECRET": operator_secret,
        # The test session registers many new names a minute (the limit: convex/fleet.test.ts).
        "HEALTH_SIDECAR_JOINS_PER_MINUTE": "100000",
        "CONVEX_LOCAL_FUNCTIONS": functions,
    }
    return start(convex_local_argv(root), port=port, ready_path="/version", log=log, env=env)


@contextlib.contextmanager
def convex_local(
    log: Path,
    secret: str = SECRET,
    port: int | None = None,
    root: Path = ROOT,
    functions: str = "repo",
) -> Iterator[Proc]:
    """`start_convex_local` for the duration of a block."""
    proc = start_convex_local(log, secret, port, root, functions)
    try:
        yield proc
    finally:
        proc.stop()


def start_mastra(log: Path, port: int | None = None) -> Proc:
    """Start a real Mastra server on 127.0.0.1 (a free port unless given)."""
    port = port or free_port()
    env = {"PORT": str(port), "MASTRA_TELEMETRY_DISABLED": "1"}
    return start(mastra_argv(), port=port, ready_path="/health", log=log, env=env)


@contextlib.contextmanager
def mastra(log: Path, port: int | None = None) -> Iterator[Proc]:
    """`start_mastra` for the duration of a block."""
    proc = start_mastra(log, port)
    try:
        yield proc
    finally:
        proc.stop()
