"""`make demo`: dev/convex-local, the real Mastra of dev/mastra and the daemon, on loopback.

Prints what to curl, then waits for Ctrl-C and stops everything it started (by PID).
"""

from __future__ import annotations

import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import procs  # noqa: E402  (the same process helpers the tests use)


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
        sidecar = procs.start(
            [sys.executable, "-m", "sidecar", "run"],
            port=sidecar_port,
            ready_path="/live",
            log=logs / "sidecar.log",
            env={
                "CONVEX_URL": convex.url,
                "MASTRA_URL": mastra.url,
                "HEALTH_SIDECAR_SECRET": secret,
                "SIDECAR_HOST": "127.0.0.1",
                "SIDECAR_PORT": str(sidecar_port),
                "SIDECAR_INSTANCE": "demo-1",
                "SIDECAR_INTERVAL": "5",
            },
        )
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
