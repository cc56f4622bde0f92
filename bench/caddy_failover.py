"""Time from the app check failing to the real Caddy taking the upstream out, and back.

    .venv/bin/python bench/caddy_failover.py [--runs 5] [--app-interval 0.25]
                                             [--caddy-interval 250ms]

Runs dev/convex-local, the real Mastra, two app containers with their sidecars on 127.0.0.2
and 127.0.0.3 and Caddy with config/Caddyfile (the fleet of tests/clients/caddy). Each run sends
steady traffic through Caddy (50 req/s, GET and POST), turns app-2's health URL to 500 at a
random moment (it keeps serving), and reports, from that moment:

  ready_503    app-2's sidecar answers /ready with 503 (its `app` check failed twice)
  caddy_down   Caddy's first failed active check of app-2's sidecar (Caddy's own log)
  last_routed  the last request Caddy routed to app-2 was sent
  back         after app-2 is healthy again: the first request Caddy routes to it

and how many client requests failed (always 0 expected).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.common import median_and_worst, repeated
from tests.support import procs
from tests.support.caddyfleet import Fleet, Hit, running_fleet, steady_traffic, until
from tests.support.daemon import wait_for
from tests.support.procs import SECRET


async def one_run(fleet: Fleet, settle: float) -> dict[str, float]:
    """Flip app-2 unhealthy under traffic, measure, flip it back, measure."""
    app2 = fleet.containers[1]
    stop = asyncio.Event()
    traffic = asyncio.create_task(steady_traffic(fleet.url, stop, rate=50, max_requests=5000))
    await asyncio.sleep(random.uniform(0.5, 0.5 + settle))  # a random phase
    flipped, flipped_wall = time.monotonic(), time.time()
    app2.app.healthy = False
    await wait_for(app2.sidecar.url + "/ready", 503, within=60)
    ready_503 = time.monotonic() - flipped

    def caddy_saw_it() -> bool:
        return bool(fleet.failed_checks(app2, flipped_wall))

    await until(caddy_saw_it, within=60, step=0.05)
    caddy_down = min(fleet.failed_checks(app2, flipped_wall)) - flipped_wall
    await asyncio.sleep(1.0)
    served_at = app2.app.served
    recovered = time.monotonic()
    app2.app.healthy = True
    await until(lambda: app2.app.served > served_at, within=settle * 3 + 10, step=0.01)
    stop.set()
    hits: list[Hit] = await traffic
    back = min(h.sent for h in hits if h.body == "app-2" and h.sent >= recovered) - recovered
    via_app2 = [h.sent - flipped for h in hits if h.body == "app-2" and flipped <= h.sent]
    via_app2 = [t for t in via_app2 if t < recovered - flipped]
    return {
        "ready_503": round(ready_503, 3),
        "caddy_down": round(caddy_down, 3),
        "last_routed": round(max(via_app2, default=0.0), 3),
        "back": round(back, 3),
        "requests": len(hits),
        "failed": sum(not h.ok for h in hits),
    }


async def with_fleet(
    workdir: Path, convex: str, mastra: str, args: argparse.Namespace
) -> list[dict[str, float]]:
    """Start the fleet of two (their sidecars' Convex at `convex`, Mastra at `mastra`), measure,
    stop."""
    async with running_fleet(
        workdir,
        convex,
        [mastra] * 2,
        app_interval=args.app_interval,
        caddy_interval=args.caddy_interval,
    ) as fleet:
        return await measure(fleet, args.runs, args.app_interval + fleet.caddy_interval)


async def measure(fleet: Fleet, runs: int, settle: float) -> list[dict[str, float]]:
    await fleet.wait_served_by({"app-1", "app-2"}, within=30)
    return await repeated(runs, lambda: one_run(fleet, settle))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--app-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--caddy-interval", default="250ms", help="a Caddy duration")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="caddy-failover-"))
    with (
        procs.convex_local(tmp / "convex.log", SECRET) as convex,
        procs.mastra(tmp / "mastra.log") as mastra,
    ):
        results = asyncio.run(with_fleet(tmp / "fleet", convex.url, mastra.url, args))
    print(
        f"\n{args.runs} runs; app check every {args.app_interval:g}s (2 failures before it "
        f"fails), Caddy health_interval {args.caddy_interval}; seconds after app-2's health "
        "URL turned 500:"
    )
    for key in ("ready_503", "caddy_down", "last_routed", "back"):
        values = [r[key] for r in results]
        print(f"  {key:12} {median_and_worst(values)}")
    print(
        f"  failed requests: {sum(int(r['failed']) for r in results)} of "
        f"{sum(int(r['requests']) for r in results)}"
    )
    print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
