"""`make demo` (dev/demo.py): the stand-ins and the daemon on loopback, what to curl, and
everything stopped on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.daemon import clean_env

BANNER = "Ctrl-C stops everything."


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.slow
def test_demo_runs_from_anywhere_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    """Run from a directory outside the repository (the harness it imports is a package of
    the checkout, not a sys.path trick): it prints the three servers with their PIDs, the
    daemon it names answers /live 200 and /ready, and SIGINT stops all three and the demo
    exits 0."""
    log = tmp_path / "demo.log"
    demo = procs.spawn(
        [sys.executable, str(procs.ROOT / "dev" / "demo.py")],
        log=log,
        env=clean_env({}),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while BANNER not in log.read_text() and demo.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        assert BANNER in text, text
        servers = dict(re.findall(r"^  [A-Za-z ()-]+?\s+(http://\S+)\s.*pid (\d+)", text, re.M))
        assert len(servers) == 3, text
        sidecar = re.search(r"^  health-sidecar\s+(\S+)", text, re.M)
        assert sidecar is not None
        with urllib.request.urlopen(sidecar.group(1) + "/live", timeout=5) as resp:
            assert resp.status == 200
        procs.wait_http(sidecar.group(1) + "/ready", timeout=30, status=200)
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(30) == 0, log.read_text()
    finally:
        procs.stop_process(demo)
    assert log.read_text().rstrip().endswith("stopped."), log.read_text()
    pids = [int(pid) for pid in servers.values()]
    assert not [pid for pid in pids if alive(pid)], log.read_text()
