"""Convex traffic of one sidecar at the defaults, as a deployment bills it: function calls per
hour and database bandwidth per month, counted by dev/convex-local (its `/_dev/stats`).

    .venv/bin/python bench/convex_budget.py [--minutes 10] [--before REF] [--instance NAME]

One daemon with the seed's configuration (CONVEX_URL, MASTRA_URL and the secret: the
`convex` and `mastra` checks every 10 s, one sync a minute, the subscription to health:watch
open) runs against dev/convex-local
and the real Mastra of dev/mastra. After a warm-up (its first syncs), the stand-in's counters
are reset and read again `--minutes` later: steady state. `--before REF` measures the same
for the daemon and functions of git revision REF (e.g. the commit before the signed sync),
served by this checkout's stand-in, so both are counted the same way.

The table projects the per-call figures to store intervals of 30, 60 and 300 s beside
Convex's quotas (Free: 1M calls and 1 GB of database bandwidth a month; Pro: 25M calls), with
how many instances fit in 10% of each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import SECRET, stop_on_sigterm, workdir
from tests.support import daemon as harness
from tests.support import procs

MONTH = 30 * 86400
WARMUP = 25.0  # the hello, the first round's change, and the first period's call
INTERVALS = (30, 60, 300)
# Per month. Free: 1M calls and 1 GB of database bandwidth (over it, the deployment is
# disabled); Pro: 25M calls (its bandwidth is billed past the included amount).
FREE_CALLS, FREE_BYTES, PRO_CALLS = 1_000_000, 1_000_000_000, 25_000_000


@dataclass(frozen=True)
class Budget:
    """What one instance cost over `seconds` of steady state."""

    label: str
    seconds: float
    calls: float
    bytes_read: float
    bytes_written: float
    documents_read: float
    documents_written: float
    by_function: dict[str, float]
    subscribed: float | None  # the daemon's sidecar_store_subscribed at the end (None: absent)

    @property
    def calls_per_hour(self) -> float:
        return self.calls / self.seconds * 3600

    @property
    def bytes_per_call(self) -> float:
        return (self.bytes_read + self.bytes_written) / max(self.calls, 1)

    @property
    def mb_per_month(self) -> float:
        return (self.bytes_read + self.bytes_written) / self.seconds * MONTH / 1e6

    def line(self) -> str:
        """The measured figures, one line."""
        return (
            f"{self.label}: {self.calls:.0f} calls in {self.seconds:.0f} s = "
            f"{self.calls_per_hour:.1f} calls/hour ({self.calls_per_hour * 720:,.0f}/month); "
            f"{self.bytes_read:,.0f} B read + {self.bytes_written:,.0f} B written "
            f"({self.documents_read:.0f} + {self.documents_written:.0f} documents) = "
            f"{self.bytes_per_call:,.0f} B per call, {self.mb_per_month:.1f} MB/month; "
            f"calls by function: {_calls(self.by_function)}; "
            f"sidecar_store_subscribed {self.subscribed}"
        )


def _calls(by_function: dict[str, float]) -> str:
    return ", ".join(f"{name} {calls:.0f}" for name, calls in sorted(by_function.items())) or "-"


def subscribed(url: str) -> float | None:
    """The daemon's `sidecar_store_subscribed` (None when its version has no such gauge)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("sidecar_store_subscribed "):
                return float(line.rpartition(" ")[2])
    return None


def table(per_call: float) -> str:
    """Calls and bandwidth per instance per month at each store interval, and the instances
    that fit in 10% of each plan's quota."""
    rows = [
        "| store interval | calls / instance / month | bandwidth / instance / month "
        "| instances in 10% of Free (calls; bandwidth) | instances in 10% of Pro's calls |",
        "| --- | --- | --- | --- | --- |",
    ]
    for interval in INTERVALS:
        calls = MONTH / interval
        size = calls * per_call
        free = f"{int(0.1 * FREE_CALLS // calls)}; {int(0.1 * FREE_BYTES // size)}"
        pro = f"{int(0.1 * PRO_CALLS // calls):,}"
        rows.append(f"| {interval} s | {calls:,.0f} | {size / 1e6:.1f} MB | {free} | {pro} |")
    return "\n".join(rows)


def stats(url: str) -> dict[str, dict[str, float]]:
    with urllib.request.urlopen(f"{url}/_dev/stats", timeout=5) as resp:
        functions: dict[str, dict[str, float]] = json.load(resp)["functions"]
        return functions


def reset(url: str) -> None:
    request = urllib.request.Request(f"{url}/_dev/stats/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass


@contextlib.contextmanager
def checkout(ref: str | None) -> Iterator[Path]:
    """This repository, or revision `ref` of it in a temporary worktree served by this
    checkout's stand-in (its counters are what this benchmark reads)."""
    if ref is None:
        yield procs.ROOT
        return
    tree = Path(tempfile.mkdtemp(prefix="sidecar-before-")) / "tree"
    git = ["git", "-C", str(procs.ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(tree), ref], check=True)
    try:
        for source in (procs.ROOT / "dev/convex-local").glob("*.ts"):
            if not source.name.endswith(".test.ts"):
                shutil.copy(source, tree / "dev/convex-local" / source.name)
        (tree / "node_modules").symlink_to(procs.ROOT / "node_modules")
        yield tree
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)


def measure(label: str, root: Path, *, minutes: float, instance: str, logs: Path) -> Budget:
    """One daemon of the checkout at `root`, at the defaults, for `minutes` of steady state."""
    with (
        procs.convex_local(logs / f"{label}-convex.log", SECRET, root=root) as convex,
        procs.mastra(logs / f"{label}-mastra.log") as mastra,
    ):
        env = {
            "CONVEX_URL": convex.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_INSTANCE": instance,
            "SIDECAR_LOG_LEVEL": "warning",
        }
        log = logs / f"{label}-daemon.log"
        with harness.running_daemon(env, log, cwd=root, wait="ready", timeout=30) as proc:
            time.sleep(WARMUP)
            reset(convex.url)
            started = time.monotonic()
            time.sleep(minutes * 60)
            counted = stats(convex.url)
            elapsed = time.monotonic() - started
            gauge = subscribed(proc.url)
    total = {k: sum(f.get(k, 0.0) for f in counted.values()) for k in next(iter(counted.values()))}
    return Budget(
        label=label,
        seconds=elapsed,
        calls=total["calls"],
        bytes_read=total["bytesRead"],
        bytes_written=total["bytesWritten"],
        documents_read=total["documentsRead"],
        documents_written=total["documentsWritten"],
        # A subscription's re-runs count as calls of its query (health:watch), as Convex bills.
        by_function={name: f.get("calls", 0.0) for name, f in counted.items()},
        subscribed=gauge,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="steady state measured")
    parser.add_argument("--before", metavar="REF", help="also measure git revision REF")
    # Docker's default hostname: the first 12 hex digits of the container id.
    parser.add_argument("--instance", default="3f9c2a7b1d0e", help="SIDECAR_INSTANCE")
    parser.add_argument("--logs", type=Path, help="where to keep the logs")
    args = parser.parse_args()
    stop_on_sigterm()
    logs = workdir(args.logs)
    results = []
    if args.before:
        with checkout(args.before) as tree:
            results.append(
                measure("before", tree, minutes=args.minutes, instance=args.instance, logs=logs)
            )
    after = measure("after", procs.ROOT, minutes=args.minutes, instance=args.instance, logs=logs)
    results.append(after)
    for result in results:
        print(result.line())
    print()
    print(table(after.bytes_per_call))
    return 0


if __name__ == "__main__":
    sys.exit(main())
