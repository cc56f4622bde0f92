"""How fast a central drain acts: seconds from `health-sidecar drain` to `/ready` 503, and to
the CLI's return with the instance's acknowledgement; `undrain` the same way back.

    .venv/bin/python bench/drain.py [--rounds 5] [--no-websocket]

One daemon at the defaults (checks every 10 s, one sync a minute) against dev/convex-local and
the real Mastra of dev/mastra. Each round runs the CLI as an operator would (a new process, its
default `--timeout 10s`) while /ready is polled every 10 ms from the moment the CLI starts; the
CLI's first line (`drained: NAME`) marks when Convex recorded the change.
`--no-websocket` puts a proxy that drops WebSocket upgrades (/api/sync) between the daemon and
Convex: the drain then comes with the next sync (polling).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import SECRET, stop_on_sigterm, workdir
from tests.support import procs
from tests.support.daemon import clean_env, get, metrics_text, start_daemon, wait_for
from tests.support.procs import OPERATOR_SECRET
from tests.support.switch import switch_server

POLL = 0.01


@dataclass(frozen=True)
class Round:
    """One command: seconds from its start to Convex's record of it (the CLI's first line), to
    /ready's turn, and to the CLI's return (acknowledged, or not: its exit code)."""

    command: str
    recorded: float | None
    ready_turned: float | None
    cli_returned: float
    returncode: int


async def timed(
    convex_url: str, daemon_url: str, status: int, *args: str, within: float = 15.0
) -> Round:
    """Run the CLI as a process; poll /ready until `status` (at most `within` s) meanwhile."""
    env = clean_env(
        {
            "CONVEX_URL": convex_url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
        }
    )
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        cwd=procs.ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    stdout = proc.stdout

    async def first_line() -> float:
        await stdout.readline()
        return time.monotonic() - started

    recorded = asyncio.create_task(first_line())
    turned = None
    while turned is None and time.monotonic() - started < within:
        if (await get(daemon_url + "/ready", within=2))[0] == status:
            turned = time.monotonic() - started
            break
        await asyncio.sleep(POLL)
    async with asyncio.timeout(within + 5):
        returncode = await proc.wait()
    returned = time.monotonic() - started
    at = await recorded if recorded.done() or returncode == 0 else None
    if not recorded.done():
        recorded.cancel()
    await proc.communicate()
    return Round(args[0], at, turned, returned, returncode)


async def run(rounds: int, no_websocket: bool, logs: Path) -> list[Round]:
    with (
        procs.convex_local(logs / "convex.log", SECRET) as convex,
        procs.mastra(logs / "mastra.log") as mastra,
    ):
        async with switch_server(upstream=convex.url) as proxy:

            async def drop(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.close()

            proxy.inject(drop, paths=("/api/sync",))
            env = {
                # The proxy forwards plain HTTP only (no upgrade): the daemon polls behind it.
                "CONVEX_URL": proxy.url if no_websocket else convex.url,
                "MASTRA_URL": mastra.url,
                "HEALTH_SIDECAR_SECRET": SECRET,
                "SIDECAR_INSTANCE": "bench-drain",
                "SIDECAR_DRAIN_SECONDS": "0",
            }
            daemon = await asyncio.to_thread(start_daemon, env, logs / "daemon.log")
            try:
                await wait_for(daemon.url + "/ready", 200, within=30)
                await asyncio.sleep(3)
                print(f"sidecar_store_subscribed: {subscribed(await metrics_text(daemon.url))}")
                results = []
                for _ in range(rounds):
                    drain = ("drain", "--instance", "bench-drain", "--reason", "bench")
                    # Polling, a drain comes with the next sync: within a store period (60 s).
                    within = 75.0 if no_websocket else 15.0
                    results.append(await timed(convex.url, daemon.url, 503, *drain, within=within))
                    undrain = ("undrain", "--instance", "bench-drain")
                    results.append(
                        await timed(convex.url, daemon.url, 200, *undrain, within=within)
                    )
                return results
            finally:
                await asyncio.to_thread(daemon.stop)


def subscribed(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("sidecar_store_subscribed "):
            return line.rpartition(" ")[2]
    return "absent"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-websocket", action="store_true", help="drop /api/sync (polling)")
    parser.add_argument("--logs", type=Path, help="where to keep the logs")
    args = parser.parse_args()
    stop_on_sigterm()
    results = asyncio.run(run(args.rounds, args.no_websocket, workdir(args.logs)))
    for command in ("drain", "undrain"):
        mine = [r for r in results if r.command == command]
        after = [
            r.ready_turned - r.recorded
            for r in mine
            if r.ready_turned is not None and r.recorded is not None
        ]
        turned = [r.ready_turned for r in mine if r.ready_turned is not None]
        returned = [r.cli_returned for r in mine]
        print(
            f"{command}: /ready turned {_spread(after)} s after Convex recorded it, "
            f"{_spread(turned)} s after the CLI started ({len(turned)}/{len(mine)}); "
            f"the CLI returned after {_spread(returned)} s, exit codes "
            f"{[r.returncode for r in mine]}"
        )
    return 0


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f}, max {max(values):.2f}"


if __name__ == "__main__":
    sys.exit(main())
