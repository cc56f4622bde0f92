"""`make demo`: dev/convex-local, the real Mastra of dev/mastra and the daemon, on loopback.

Prints what to curl, then waits for Ctrl-C and stops everything it started (by PID).
"""

from __future__ import annotations

import secrets
import signal
import socket
import tempfile
from pathlib import Path

from tests.support import procs  # the harness the tests use (importable: `pip install -e .`)
from tests.support.daemon import start_daemon


def port(preferred: int) -> int:
    """The preferred port when it is free on loopback, else any free one."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return procs.free_port()
    return preferred


def main() -> int:
    logs = Path(tempfile.mkdtemp(prefix="health-sidecar-demo-"))
    secret = secrets.token_urlsafe(24)
    convex_port, mastra_port, sidecar_port = port(3210), port(4111), port(8099)
    started: list[procs.Proc] = []
    try:
        print("starting dev/convex-local, dev/mastra and health-sidecar ...", flush=True)
        convex = procs.start_convex_local(logs / "convex-local.log", secret, convex_port)
        started.append(convex)
        mastra = procs.start_mastra(logs / "mastra.log", mastra_port)
        started.append(mastra)
        env = {
            "CONVEX_URL": convex.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": secret,
            "SIDECAR_INSTANCE": "demo-1",
            "SIDECAR_INTERVAL": "5",
        }
        sidecar = start_daemon(env, logs / "sidecar.log", port=sidecar_port, wait="live")
        started.append(sidecar)
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

Ctrl-C stops everything.""",
            flush=True,
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        for proc in reversed(started):
            proc.stop()
        print("\nstopped.")
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    raise SystemExit(main())
