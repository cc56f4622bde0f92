"""The daemon as a process, started against a Convex that does not answer: what its first
lines say."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support import faults, procs
from tests.support.daemon import log_lines, start_daemon
from tests.support.procs import SECRET


def test_the_first_failure_counts_from_the_first_store_call(tmp_path: Path) -> None:
    """Nothing listens at CONVEX_URL: the `convex` check turns fail at once, and the line
    saying so counts the silence from the first store call (seconds), instead of claiming the
    whole window (two store periods plus the timeout, 122 s) before any time has passed."""
    env = {
        "CONVEX_URL": faults.refused_url(),
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INTERVAL": "0.5",
        "SIDECAR_TIMEOUT": "0.4",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    proc = start_daemon(env, tmp_path / "daemon.log")
    try:
        failed = _first_fail(proc, within=10.0)
    finally:
        proc.stop()
    output = failed["output"]
    assert "runtime: no store call answered yet (" in output, failed
    assert "122s" not in output, failed


def _first_fail(proc: procs.Proc, *, within: float) -> dict[str, Any]:
    """The first log line of the `convex` check turning fail (polled, bounded by `within`)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in log_lines(proc):
            if line.get("check") == "convex" and line.get("to") == "fail":
                return line
        time.sleep(0.1)
    raise AssertionError(f"no line for convex turning fail within {within}s:\n{proc.output()}")
