"""Measuring tools shared by the load tests and bench/: wrk with a JSON report, and /proc.

wrk (Debian's) is driven with a Lua `done()` that prints one JSON line (latency percentiles,
request count, socket errors and, when asked, a count of every status code seen), so no
scraping of wrk's human-readable output is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

MARK = "WRK-JSON "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_DONE = r"""
local function encode(t)
  local parts = {}
  for k, v in pairs(t) do
    local value = type(v) == "table" and encode(v) or tostring(v)
    parts[#parts + 1] = string.format('"%s":%s', tostring(k), value)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("counts") or {}
    for code, n in pairs(counted) do
      statuses[code] = (statuses[code] or 0) + n
    end
  end
  local report = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = summary.errors,
    latency_us = {
      p50 = latency:percentile(50),
      p90 = latency:percentile(90),
      p99 = latency:percentile(99),
      max = latency.max,
      mean = latency.mean,
    },
    statuses = statuses,
  }
  io.write("WRK-JSON " .. encode(report) .. "\n")
end
"""

_THREADS = r"""
threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end
"""

# Defining response() makes wrk hand every response to Lua: slower, so only when asked.
_STATUSES = r"""
counts = {}
function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end
"""


def wrk_script(*, count_statuses: bool) -> str:
    """The Lua script text: a JSON report, and a per-status count when `count_statuses`."""
    return _THREADS + (_STATUSES if count_statuses else "") + _DONE


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured. Latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    socket_errors: dict[str, int]
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Requests per second over the run."""
        return self.requests / self.seconds if self.seconds else 0.0

    def unexpected(self, expected: int) -> int:
        """Socket errors, timeouts and responses whose status is not `expected`."""
        others = sum(n for code, n in self.statuses.items() if code != expected)
        return sum(self.socket_errors.values()) + others


def parse_wrk(stdout: str) -> WrkResult:
    """The report our Lua `done()` printed."""
    for line in stdout.splitlines():
        if line.startswith(MARK):
            doc = json.loads(line[len(MARK) :])
            break
    else:
        raise ValueError(f"no wrk report in output:\n{stdout}")
    lat = doc["latency_us"]
    errors = {k: int(v) for k, v in doc["errors"].items()}
    # wrk's own `status` error count (>= 400) is replaced by the exact per-status counts
    # when they were collected; it stays a socket-level figure otherwise.
    statuses = {int(k): int(v) for k, v in doc["statuses"].items()}
    if statuses:
        errors.pop("status", None)
    return WrkResult(
        requests=int(doc["requests"]),
        seconds=float(doc["duration_us"]) / 1e6,
        p50_ms=float(lat["p50"]) / 1000,
        p90_ms=float(lat["p90"]) / 1000,
        p99_ms=float(lat["p99"]) / 1000,
        max_ms=float(lat["max"]) / 1000,
        mean_ms=float(lat["mean"]) / 1000,
        socket_errors=errors,
        statuses=statuses,
    )


def wrk_binary() -> str:
    """Debian's wrk (`make test` installs it)."""
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk; `make test` does it)")
    return found


def wrk_argv(
    url: str,
    script: Path,
    *,
    connections: int = 50,
    threads: int = 2,
    seconds: float = 10,
    timeout: float = 2,
    headers: Sequence[str] = (),
    cpu: str | None = None,
) -> list[str]:
    """A bounded wrk command line (duration and per-request timeout), bound to `cpu` with
    taskset when given."""
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    return [
        *pin,
        wrk_binary(),
        f"-c{connections}",
        f"-t{threads}",
        f"-d{seconds:g}s",
        f"--timeout={timeout:g}s",
        *(arg for header in headers for arg in ("-H", header)),
        "-s",
        str(script),
        url,
    ]


def write_script(directory: Path, *, count_statuses: bool) -> Path:
    """Write the Lua report script into `directory`; returns its path."""
    path = directory / ("wrk-status.lua" if count_statuses else "wrk-report.lua")
    path.write_text(wrk_script(count_statuses=count_statuses))
    return path


def run_wrk(
    url: str,
    *,
    connections: int = 50,
    threads: int = 2,
    seconds: float = 10,
    count_statuses: bool = False,
    headers: Sequence[str] = (),
    cpu: str | None = None,
) -> WrkResult:
    """Run wrk against `url` (blocking) and return its report."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = write_script(Path(tmp), count_statuses=count_statuses)
        argv = wrk_argv(
            url,
            script,
            connections=connections,
            threads=threads,
            seconds=seconds,
            headers=headers,
            cpu=cpu,
        )
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 30, check=True
        )
    return parse_wrk(done.stdout)


async def run_wrk_async(
    url: str,
    script: Path,
    *,
    connections: int,
    threads: int,
    seconds: float,
) -> WrkResult:
    """Run wrk as a subprocess without blocking the event loop (servers in the loop keep
    answering); killed by its own PID if it overruns."""
    argv = wrk_argv(url, script, connections=connections, threads=threads, seconds=seconds)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {err.decode(errors='replace')}")
    return parse_wrk(out.decode())


# /proc ---------------------------------------------------------------------------------------


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def rss_kb(pid: int) -> int:
    """Resident set size in KiB."""
    return _status_field(pid, "VmRSS")


def thread_count(pid: int) -> int:
    """Threads of the process."""
    return _status_field(pid, "Threads")


def fd_count(pid: int) -> int:
    """Open file descriptors of the process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
