"""Accelerated soak, reduced for `make test`: thousands of rounds at a 10 ms interval.

The full form (20,000 rounds) is `bench/soak.py`, which reports the slope.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import procs
from tests.support.daemon import log_lines, start_daemon
from tests.support.procs import SECRET
from tests.support.soaking import CHECKS, series_sum, soak, soak_env

pytestmark = [pytest.mark.serial, pytest.mark.slow]

ROUNDS = 3500
WARMUP_ROUNDS = 1500  # allocator arenas and caches settle in the first ~1,500 rounds
WITHIN = 55.0
# Four probes a round: leaking as little as 32 bytes a probe (a response, a task, a socket
# buffer leaks far more) would pass 128 KiB per 1,000 rounds. A healthy daemon settles below
# ~50 after the warm-up and is flat after ~10,000 rounds (bench/soak.py).
MAX_SLOPE_KB_PER_1000 = 128.0
MAX_GROWTH_KB = 512


def test_soak_memory_and_descriptors_stay_flat(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    """Four checks every 10 ms for 3,500 rounds (14,000 probes and a Convex sync a second, within
    55 s): after a warm-up of 1,500 rounds, RSS grows less than 128 KiB per 1,000 rounds and
    less than 512 KiB in all; open file descriptors and threads end where they began (probe
    connections in flight aside); no check loop crashed and no background task died."""
    daemon = start_daemon(
        soak_env(convex_local.url, mastra_local.url, SECRET, "soak"), tmp_path / "daemon.log"
    )
    try:
        result = soak(
            daemon.url,
            daemon.popen.pid,
            checks=CHECKS,
            rounds=ROUNDS,
            within=WITHIN,
            warmup_rounds=WARMUP_ROUNDS,
        )
    finally:
        exit_code = daemon.stop()
    assert exit_code == 0
    measured = result.measured
    report = (
        f"{result.rounds:.0f} rounds in {result.seconds:.1f} s; RSS "
        f"{measured[0].rss_kb} -> {measured[-1].rss_kb} KiB, slope "
        f"{result.rss_slope_kb_per_1000_rounds:.1f} KiB/1000 rounds; fds "
        f"{[s.fds for s in measured[:: max(1, len(measured) // 20)]]}"
    )
    print(report)
    assert result.rounds >= ROUNDS, report
    assert len(measured) >= 20, report
    assert result.rss_slope_kb_per_1000_rounds < MAX_SLOPE_KB_PER_1000, report
    assert max(s.rss_kb for s in measured) - measured[0].rss_kb < MAX_GROWTH_KB, report
    # Each probe holds a socket for a moment: compare medians, and bound the worst.
    assert abs(result.window("last", "fds") - result.window("first", "fds")) <= 3, report
    assert max(s.fds for s in measured) <= min(s.fds for s in measured) + 12, report
    assert {s.threads for s in measured} == {measured[0].threads}, report
    after = result.metrics_after
    assert series_sum(after, "sidecar_check_crashes_total") == 0
    assert series_sum(after, "sidecar_store_requests_total", op="sync", result="ok") >= 10
    assert not [line for line in log_lines(daemon) if line["level"] == "error"]
