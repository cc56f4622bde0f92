"""For the bad-input tests: a running daemon's handle (its log read incrementally, its open
descriptors), its environment, and the checks run after every abusive request: still right,
still fast, logs still clean JSON."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import procs, rawhttp
from tests.support.procs import SECRET

TOKEN = "bad-input-details-token-0123456789"
FAST = 0.050  # seconds: /ready and /health answer within this after any abuse (median of 5)


@dataclass
class Daemon:
    """A running daemon, where it listens and how far its log has been read."""

    proc: procs.Proc
    host: str
    port: int
    log_offset: int = 0

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def new_log_lines(self) -> list[str]:
        """Complete log lines written since the last call."""
        data = self.proc.log.read_bytes()
        end = data.rfind(b"\n") + 1
        chunk = data[self.log_offset : max(end, self.log_offset)]
        self.log_offset = max(end, self.log_offset)
        return [line for line in chunk.decode(errors="replace").splitlines() if line.strip()]

    def open_fds(self) -> int:
        """How many file descriptors the daemon holds now."""
        return len(list(Path(f"/proc/{self.pid}/fd").iterdir()))


def daemon_env(convex: procs.Proc, mastra: procs.Proc, instance: str) -> dict[str, str]:
    """The seed's two checks, against dev/convex-local and the real Mastra server; intervals
    loose enough that a busy machine never flips them."""
    return {
        "CONVEX_URL": convex.url,
        "MASTRA_URL": mastra.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_DETAILS_TOKEN": TOKEN,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": "2",
        "SIDECAR_TIMEOUT": "1.5",
        "SIDECAR_DRAIN_SECONDS": "0",
    }


def assert_still_right(daemon: Daemon, what: str) -> None:
    """After an abuse: the process runs; `/ready` 200 `{"ready": true}` and `/health` 200 with
    both checks ok, each within FAST (median of 5 fresh connections); `/live` 200; every new
    log line is JSON, none is an error and none carries a traceback."""
    assert daemon.proc.popen.poll() is None, f"after {what}: the daemon exited"
    timings: dict[str, list[float]] = {"/ready": [], "/health": []}
    for _ in range(5):
        for path in timings:
            started = time.perf_counter()
            resp = rawhttp.get(daemon.host, daemon.port, path)
            timings[path].append(time.perf_counter() - started)
            body = resp.json()
            if path == "/ready":
                assert (resp.status, body) == (200, {"ready": True}), f"after {what}"
            else:
                assert resp.status == 200, f"after {what}: {body}"
                assert body["services"]["convex"] == body["services"]["mastra"] == "ok", body
    for path, values in timings.items():
        median = statistics.median(values)
        assert median < FAST, f"after {what}: {path} took {median * 1000:.1f} ms (median)"
    assert rawhttp.get(daemon.host, daemon.port, "/live").status == 200, f"after {what}"
    assert_clean_logs(daemon.new_log_lines(), what)


def assert_clean_logs(lines: list[str], what: str) -> None:
    """Every line is one JSON object; no error level, no traceback."""
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            raise AssertionError(f"after {what}: a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(event, dict), line
        traceback = "exception" in event or "Traceback" in line
        assert not traceback, (
            f"after {what}: {event.get('component')} logged a traceback "
            f"({event.get('level')}: {event.get('message')!r}): {line[:400]}"
        )
        assert event.get("level") not in ("error", "critical"), (
            f"after {what}: an {event.get('level')} line: {line[:400]}"
        )
