"""Run the real daemon (`python -m sidecar run`) as a subprocess and read what it says."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import procs


def start_daemon(env: Mapping[str, str], log: Path, *, timeout: float = 15.0) -> procs.Proc:
    """Start the daemon with `env` (SIDECAR_PORT is chosen here) and wait for `/live`."""
    port = procs.free_port()
    full = {"SIDECAR_HOST": "127.0.0.1", "SIDECAR_PORT": str(port), **env}
    return procs.start(
        [sys.executable, "-m", "sidecar", "run"],
        port=port,
        ready_path="/live",
        log=log,
        env=full,
        timeout=timeout,
    )


async def get(url: str, within: float = 5.0) -> tuple[int, Any]:
    """GET a JSON endpoint: (status, parsed body). Async, so that fault servers running in
    the test's own event loop keep answering while the test waits."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=within)) as session,
        session.get(url) as resp,
    ):
        return resp.status, json.loads(await resp.read() or b"null")


async def wait_for(url: str, status: int, *, within: float) -> float:
    """Poll `url` until it answers `status`; return how long that took."""
    started = time.monotonic()
    deadline = started + within
    last: tuple[int, Any] | None = None
    while time.monotonic() < deadline:
        last = await get(url)
        if last[0] == status:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer {status} within {within}s; last: {last}")


def log_lines(proc: procs.Proc) -> list[dict[str, Any]]:
    """The daemon's stdout as parsed JSON lines (every line must be JSON)."""
    lines = []
    for line in proc.output().splitlines():
        if line.strip():
            lines.append(json.loads(line))
    return lines


async def metrics_text(url: str) -> str:
    """The daemon's `/metrics` page in Prometheus' text format."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
        return await resp.text()


def metric(text: str, series: str) -> float:
    """The value of one series (name and labels exactly as rendered) on a metrics page."""
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"{series} not on the metrics page")
