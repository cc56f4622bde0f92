"""`make demo`: dev/convex-local, the real Mastra of dev/mastra and the daemon, on loopback.

Prints what to curl and the environment to use the CLI against it (one `export` line), then
waits. Ctrl-C (or SIGTERM) stops it as production would: the daemon drains (its log shows
`draining`, then `stopped`), then the stand-ins stop; everything by the PID it started.
A second Ctrl-C while the daemon drains is the daemon's own second signal: it exits at once.

The children start with SIGINT and SIGTERM unblocked and at their defaults (this process
blocks neither: it waits in `signal.pause`, and takes SIGTERM as Ctrl-C), each in a session of
its own, so that Ctrl-C in the terminal reaches this process only and the order of the stop
is this file's: the daemon's last sync needs the Convex stand-in still up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from tests.support import procs  # the harness the tests use (importable: `pip install -e .`)
from tests.support.daemon import start_daemon

INSTANCE = "demo-1"
DRAIN_SECONDS = 3  # production's default is 15 s (SIDECAR_DRAIN_SECONDS): shorter to watch
STORE_INTERVAL = 5  # a sync every 5 s (production: 60): a drain shows within 5 s
STOP_MARGIN = 10.0  # beyond the drain: the daemon's last sync (SIDECAR_STORE_TIMEOUT, 2 s)


def port(preferred: int) -> int:
    """The preferred port when it is free on loopback, else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return procs.free_port()
    return preferred


def export_line(env: Mapping[str, str]) -> str:
    """One shell line that gives a new shell the daemon's settings and the checkout's
    `health-sidecar` on PATH, so `health-sidecar config`, `fleet` and `drain` talk to the demo."""
    bin_dir = shlex.quote(str(Path(sys.executable).parent))
    pairs = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    return f'export PATH={bin_dir}:"$PATH" {pairs}'


def stop(sidecar: procs.Proc | None, stand_ins: list[procs.Proc]) -> None:
    """Stop the daemon (SIGTERM: it drains, syncs a last time and exits), then the stand-ins.
    From here on Ctrl-C (or SIGTERM) no longer interrupts this process: it is passed on to the
    daemon as its second signal (it then exits at once)."""

    def hurry(_signum: int, _frame: FrameType | None) -> None:
        if sidecar is not None and sidecar.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sidecar.popen.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, hurry)
    signal.signal(signal.SIGTERM, hurry)
    if sidecar is not None:
        print(f"\nstopping: health-sidecar drains ({DRAIN_SECONDS} s) ...", flush=True)
        status = sidecar.stop(timeout=DRAIN_SECONDS + STOP_MARGIN)
        print(f"health-sidecar exited with status {status}", flush=True)
    for proc in reversed(stand_ins):
        proc.stop()
    print("stopped.", flush=True)


def main() -> int:
    # SIGTERM stops the demo as Ctrl-C does (KeyboardInterrupt), and neither is blocked: the
    # children inherit this process's signal mask, and a blocked SIGTERM would make the daemon
    # deaf to it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logs = Path(tempfile.mkdtemp(prefix="health-sidecar-demo-"))
    secret = secrets.token_urlsafe(24)
    operator_secret = secrets.token_urlsafe(24)
    convex_port, mastra_port, sidecar_port = port(3210), port(4111), port(8099)
    stand_ins: list[procs.Proc] = []
    sidecar: procs.Proc | None = None
    try:
        print("starting dev/convex-local, dev/mastra and health-sidecar ...", flush=True)
        convex = procs.start_convex_local(
            logs / "convex-local.log", secret, convex_port, operator_secret=operator_secret
        )
        stand_ins.append(convex)
        mastra = procs.start_mastra(logs / "mastra.log", mastra_port)
        stand_ins.append(mastra)
        env = {
            "CONVEX_URL": convex.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": secret,
            "HEALTH_SIDECAR_OPERATOR_SECRET": operator_secret,
            "SIDECAR_INSTANCE": INSTANCE,
            "SIDECAR_INTERVAL": "5",
            "SIDECAR_STORE_INTERVAL": str(STORE_INTERVAL),
            "SIDECAR_DRAIN_SECONDS": str(DRAIN_SECONDS),
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(sidecar_port),
        }
        # The daemon never holds the operator's key (only the CLI and the deployment do).
        daemon_env = {k: v for k, v in env.items() if k != "HEALTH_SIDECAR_OPERATOR_SECRET"}
        sidecar = start_daemon(daemon_env, logs / "sidecar.log", port=sidecar_port)
        s = sidecar.url
        print(
            f"""
health-sidecar demo is running (logs in {logs}):
  Convex stand-in  {convex.url}   (dev/convex-local, pid {convex.popen.pid})
  Mastra (real)    {mastra.url}   (dev/mastra, pid {mastra.popen.pid})
  health-sidecar   {s}   (pid {sidecar.popen.pid})

Try:
  curl -i {s}/live
  curl -i {s}/ready
  curl -s {s}/health
  curl -s '{s}/health?verbose' | python3 -m json.tool
  curl -s -H 'Accept: application/health+json' {s}/health
  curl -s {s}/metrics | grep ^sidecar_
  tail -f {logs}/sidecar.log
  curl -s {convex.url}/_dev/stats   # Convex calls and database bytes so far
  kill -STOP {mastra.popen.pid}   # Mastra hangs: watch /ready turn 503 ...
  kill -CONT {mastra.popen.pid}   # ... and come back

The command line against it, from another shell:
  {export_line(env)}
  health-sidecar config
  health-sidecar fleet
  health-sidecar drain --instance {INSTANCE} --reason "try" --for 5m  # 503 in {STORE_INTERVAL} s
  health-sidecar undrain --instance {INSTANCE}

Ctrl-C stops everything (health-sidecar drains for {DRAIN_SECONDS} s first).""",
            flush=True,
        )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop(sidecar, stand_ins)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
