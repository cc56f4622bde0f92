"""Run the real Prometheus on loopback with the shipped config/prometheus.yml and ask its API."""

from __future__ import annotations

import asyncio
import shutil
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.support import procs

CONFIG = procs.ROOT / "config"
JOB = "health-sidecar"

T = TypeVar("T")

# The Prometheus tests' sidecar has one shared check (one instance of the fleet probes it for
# all): alone in its fleet, it takes the lease, so sidecar_check_holder has a 1 to show.
SHARED_CHECK = "mastra_agents"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool` (Debian's package; `make test` installs it)."""
    path = shutil.which(name)
    assert path, f"{name} missing: `make test` installs Debian's prometheus package"
    return path


def config_for(target: str) -> str:
    """config/prometheus.yml as shipped, with only its targets and intervals swapped: one
    target (`host:port`), scraped and evaluated every second. Fails loudly if the shipped file
    no longer has a line this swaps, rather than testing something else."""
    text = (CONFIG / "prometheus.yml").read_text()
    swaps = [
        ("scrape_interval: 15s", "scrape_interval: 1s"),
        ("scrape_timeout: 5s", "scrape_timeout: 1s"),
        ("evaluation_interval: 15s", "evaluation_interval: 1s"),
        ('targets: ["app-1:8099", "app-2:8099"]', f'targets: ["{target}"]'),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, f"config/prometheus.yml: expected one {old!r}"
        text = text.replace(old, new)
    return text


def start(target: str, workdir: Path, *, timeout: float = 30.0) -> procs.Proc:
    """Prometheus scraping `target` with the shipped config and alerts (copied into `workdir`,
    as the config names alerts.yml relative to itself), its TSDB in `workdir`, on a free
    loopback port. Blocking: call it through `asyncio.to_thread` from a test whose event loop
    serves something."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG / "alerts.yml", workdir / "alerts.yml")
    config = workdir / "prometheus.yml"
    config.write_text(config_for(target))
    port = procs.free_port()
    argv = [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    started = time.monotonic()
    proc = procs.start(
        argv, port=port, ready_path="/-/ready", log=workdir / "prometheus.log", timeout=timeout
    )
    # procs.start returns on any answer; /-/ready answers 503 until the TSDB and rules load.
    while True:
        try:
            with urllib.request.urlopen(proc.url + "/-/ready", timeout=2):
                return proc
        except OSError as exc:  # HTTPError (503) included
            if time.monotonic() - started > timeout or proc.popen.poll() is not None:
                proc.stop()
                raise RuntimeError(f"Prometheus not ready: {exc}\n{proc.output()}") from exc
            time.sleep(0.05)


async def api(base: str, path: str, **params: str) -> Any:
    """GET `/api/v1/<path>` and return its `data` (asserting `"status": "success"`)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(f"{base}/api/v1/{path}", params=params) as resp,
    ):
        body = await resp.json()
    assert body.get("status") == "success", (path, params, body)
    return body["data"]


async def query(base: str, expr: str) -> list[dict[str, Any]]:
    """An instant query: the result vector (`[{"metric": {...}, "value": [ts, "v"]}, ...]`)."""
    data = await api(base, "query", query=expr)
    assert data["resultType"] == "vector", data
    result: list[dict[str, Any]] = data["result"]
    return result


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    what: Callable[[], str],
    every: float = 0.2,
) -> T:
    """Call `probe` until it returns something other than None; after `within` seconds fail
    with `what()` (which can tell what `probe` saw last)."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what()}")
        await asyncio.sleep(every)
