"""The accelerated soak, shared by tests/daemon/load (reduced) and bench/soak.py (full).

A running daemon probes every `interval` seconds; we sample its RSS, open file descriptors and
threads from /proc while its rounds add up (counted by `sidecar_check_runs_total`), then fit a
line through the RSS after a warm-up.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.measure import fd_count, rss_kb, slope, thread_count

# The soaked checks: the built-in two, an http check of Mastra and a tcp check of Convex.
CHECKS = ("convex", "mastra", "app", "db")


def soak_env(convex: str, mastra: str, secret: str, instance: str) -> dict[str, str]:
    """The soaked daemon: the four CHECKS every 10 ms, with 10 ms timeouts, and a Convex sync
    a second (Convex at `convex` holding `secret`, Mastra at `mastra`)."""
    checks = [
        {"name": "app", "kind": "http", "target": mastra + "/health"},
        {"name": "db", "kind": "tcp", "target": convex.removeprefix("http://")},
    ]
    return {
        "CONVEX_URL": convex,
        "MASTRA_URL": mastra,
        "HEALTH_SIDECAR_SECRET": secret,
        "SIDECAR_INSTANCE": instance,
        "SIDECAR_INTERVAL": "0.01",
        "SIDECAR_TIMEOUT": "0.01",
        "SIDECAR_DRAIN_SECONDS": "0",
        "SIDECAR_STORE_INTERVAL": "1",
        "SIDECAR_CHECKS": json.dumps(checks),
    }


@dataclass(frozen=True)
class Sample:
    """One look at the daemon: seconds since the soak began, and /proc figures."""

    at: float
    rounds: float
    rss_kb: int
    fds: int
    threads: int


@dataclass
class SoakResult:
    """What a soak saw. `warm` is the index of the first sample after the warm-up."""

    samples: list[Sample] = field(default_factory=list)
    warm: int = 0
    metrics_before: str = ""
    metrics_after: str = ""

    @property
    def measured(self) -> list[Sample]:
        """The samples after the warm-up."""
        return self.samples[self.warm :]

    @property
    def rounds(self) -> float:
        """Rounds completed during the soak (the slowest check's runs), counted from the
        metrics page read before the first sample, as the loop that ends the soak counts them."""
        return self.samples[-1].rounds

    @property
    def seconds(self) -> float:
        """How long the soak ran."""
        return self.samples[-1].at

    @property
    def rss_slope_kb_per_1000_rounds(self) -> float:
        """RSS growth (KiB) per 1,000 rounds after the warm-up (least squares)."""
        m = self.measured
        return 1000 * slope([s.rounds for s in m], [s.rss_kb for s in m])

    @property
    def rss_slope_kb_per_min(self) -> float:
        """RSS growth (KiB per minute) after the warm-up (least squares)."""
        m = self.measured
        return 60 * slope([s.at for s in m], [s.rss_kb for s in m])

    def window(self, which: str, attr: str, size: int = 10) -> float:
        """Median of `attr` over the first or last `size` measured samples."""
        m = self.measured
        chosen = m[:size] if which == "first" else m[-size:]
        return float(statistics.median(getattr(s, attr) for s in chosen))


def metrics_page(url: str) -> str:
    """The daemon's /metrics text."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def series_sum(text: str, name: str, **labels: str) -> float:
    """Sum of every series of metric `name` whose labels include `labels`."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(w in series for w in wanted):
            total += float(value)
    return total


def rounds_done(text: str, checks: Sequence[str]) -> float:
    """Completed rounds: the runs of the check that ran least."""
    return min(series_sum(text, "sidecar_check_runs_total", check=c) for c in checks)


def soak(
    url: str,
    pid: int,
    *,
    checks: Sequence[str],
    rounds: int,
    within: float,
    warmup_rounds: int,
    sample_every: float = 0.25,
) -> SoakResult:
    """Sample the daemon at `url` (process `pid`) until `rounds` more rounds are done, or
    `within` seconds pass; the first `warmup_rounds` rounds are the warm-up."""
    result = SoakResult(metrics_before=metrics_page(url))
    start_rounds = rounds_done(result.metrics_before, checks)
    started = time.monotonic()
    while True:
        now = time.monotonic() - started
        done = rounds_done(metrics_page(url), checks) - start_rounds
        result.samples.append(Sample(now, done, rss_kb(pid), fd_count(pid), thread_count(pid)))
        if result.warm == 0 and done >= warmup_rounds:
            result.warm = len(result.samples) - 1
        if done >= rounds or now >= within:
            break
        time.sleep(sample_every)
    result.metrics_after = metrics_page(url)
    return result
