"""The real Caddy, run from config/Caddyfile, in front of app containers with their sidecars.

Each container gets its own loopback address (127.0.0.2, 127.0.0.3, ... up to 127.0.0.6): its
app listens on APP_PORT and its sidecar on SIDECAR_PORT of that address, so Caddy's
`health_port` reaches the sidecar beside each upstream, as in production. Caddy runs the
shipped Caddyfile with its placeholders set (upstreams, ports, a short health_interval); the
only change made to what it adapts to is that its sites listen on 127.0.0.1 instead of every
interface. Every sidecar has its own Mastra URL (the real Mastra, or a switchable proxy in
front of it), and all of them share one Convex: they are one fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import loopback, procs
from tests.support.daemon import (
    cli_async,
    metric,
    metrics_text,
    spawn_daemon,
    stop_at_once,
    wait_for,
    wait_up,
)
from tests.support.procs import OPERATOR_SECRET, SECRET

CADDYFILE = procs.ROOT / "config" / "Caddyfile"
# One loopback address per container, in order: app-1 on 127.0.0.2, app-2 on 127.0.0.3...
HOSTS = tuple(f"127.0.0.{n}" for n in range(2, 7))
# The Caddyfile's placeholders ({$NAME:default}); the tests set every one of them.
PLACEHOLDERS = (
    "SITE_ADDRESS",
    "APP_UPSTREAMS",
    "SIDECAR_PORT",
    "CADDY_HEALTH_INTERVAL",
    "CADDY_ADMIN",
    "CADDY_METRICS_ADDRESS",
)
GAUGE = "caddy_reverse_proxy_upstreams_healthy"


def caddy_binary() -> str:
    """The installed caddy (`make test` installs Debian's 2.6.2 when it is missing)."""
    path = shutil.which("caddy")
    if path is None:
        raise RuntimeError("caddy is not installed (make debs installs Debian's caddy)")
    return path


def caddy_env(home: Path, placeholders: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for the caddy CLI: its state under `home`, the Caddyfile's placeholders
    exactly as given (the caller's environment does not leak into them)."""
    env = {k: v for k, v in os.environ.items() if k not in PLACEHOLDERS}
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        env[name] = str(home / name.lower())
    env.update(placeholders or {})
    return env


def caddy(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a short caddy command (validate, adapt, fmt); its output is captured."""
    return subprocess.run(
        [caddy_binary(), *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def adapt(env: Mapping[str, str], path: Path = CADDYFILE) -> dict[str, Any]:
    """The JSON configuration Caddy makes of a Caddyfile (placeholders from `env`)."""
    done = caddy("adapt", "--adapter", "caddyfile", "--config", str(path), env=env)
    if done.returncode != 0:
        raise AssertionError(f"caddy adapt failed:\n{done.stderr}")
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def reverse_proxy(config: dict[str, Any]) -> dict[str, Any]:
    """The one reverse_proxy handler of an adapted configuration."""
    found: list[dict[str, Any]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy":
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    assert len(found) == 1, f"expected one reverse_proxy handler, found {len(found)}"
    return found[0]


def loopback_listeners(config: dict[str, Any], host: str = "127.0.0.1") -> dict[str, Any]:
    """`config` with every server listening on `host` only (":8080" -> "127.0.0.1:8080")."""
    for server in config["apps"]["http"]["servers"].values():
        server["listen"] = [host + a if a.startswith(":") else a for a in server["listen"]]
    return config


@dataclass
class Container:
    """One app container: the app and its sidecar, on one loopback address."""

    name: str
    host: str
    app: loopback.AppServer
    sidecar: procs.Proc
    instance: str  # the sidecar's SIDECAR_INSTANCE, as Convex knows it

    @property
    def upstream(self) -> str:
        """The upstream as Caddy names it (the `upstream` label of its metrics)."""
        return f"{self.host}:{self.app.port}"


@dataclass
class Fleet:
    """Caddy and the containers behind it; `url` is the site clients use."""

    url: str
    admin: str
    metrics: str
    caddy: procs.Proc
    containers: list[Container]
    drain_seconds: float
    caddy_interval: float

    def caddy_log(self) -> list[dict[str, Any]]:
        """Caddy's log lines (JSON on stderr), parsed."""
        lines = []
        for line in self.caddy.output().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def gauge(self, container: Container, base: str | None = None) -> float:
        """caddy_reverse_proxy_upstreams_healthy of one upstream (admin API by default)."""
        text = await metrics_text(base or self.admin)
        return metric(text, f'{GAUGE}{{upstream="{container.upstream}"}}')

    async def wait_gauge(self, container: Container, value: float, *, within: float) -> float:
        """Poll the gauge until it reads `value`; return how long that took."""
        started = time.monotonic()
        last = None
        while time.monotonic() - started < within:
            last = await self.gauge(container)
            if last == value:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"{GAUGE} of {container.upstream} stayed {last}, not {value}")

    async def served_by(self, requests: int) -> Counter[str]:
        """Send `requests` GETs through Caddy one after the other: who answered (the body),
        or `status <n>` for anything but a 200."""
        seen: Counter[str] = Counter()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for n in range(requests):
                async with session.get(f"{self.url}/page/{n}") as resp:
                    body = await resp.text()
                    seen[body if resp.status == 200 else f"status {resp.status}"] += 1
        return seen

    async def wait_served_by(
        self, names: set[str], *, within: float, batch: int = 20
    ) -> tuple[float, Counter[str]]:
        """Send batches through Caddy until one batch is answered by exactly `names`."""
        started = time.monotonic()
        seen: Counter[str] = Counter()
        while time.monotonic() - started < within:
            seen = await self.served_by(batch)
            if set(seen) == names:
                return time.monotonic() - started, seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"traffic through Caddy never came from exactly {names}: {seen}")


def sidecar_env(
    convex_url: str,
    mastra_url: str,
    app: loopback.AppServer,
    *,
    drain: float,
    interval: float,
    settings: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A sidecar beside `app`: the seed's checks plus a critical `app` check, every
    `interval` seconds, with the default thresholds (2 failures before it fails); the seed's
    checks every second unless `settings` (applied last) says otherwise."""
    app_check = {
        "name": "app",
        "kind": "http",
        "target": f"{app.url}/api/health",
        "interval": interval,
        "timeout": interval,
        "critical": True,
    }
    return {
        "CONVEX_URL": convex_url,
        "MASTRA_URL": mastra_url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_INSTANCE": f"caddy-{app.name}-{uuid.uuid4().hex[:8]}",
        "SIDECAR_INTERVAL": "1",
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_DRAIN_SECONDS": str(drain),
        "SIDECAR_CHECKS": json.dumps([app_check]),
        **(settings or {}),
    }


def start_caddy(workdir: Path, placeholders: Mapping[str, str], admin: str) -> procs.Proc:
    """`caddy run` on config/Caddyfile (adapted, listening on loopback); waits for the admin
    API. Stop it with `.stop()` (by its PID)."""
    env = caddy_env(workdir, placeholders)
    config = loopback_listeners(adapt(env))
    path = workdir / "caddy.json"
    path.write_text(json.dumps(config, indent=1))
    log = workdir / "caddy.log"
    popen = procs.spawn(
        [caddy_binary(), "run", "--config", str(path)], log=log, env=env, cwd=workdir
    )
    try:
        procs.wait_http(admin + "/config/", timeout=15, popen=popen)
    except BaseException as exc:
        procs.stop_process(popen)
        raise RuntimeError(f"caddy did not start:\n{log.read_text()}") from exc
    return procs.Proc(popen=popen, url=admin, log=log)


@contextlib.asynccontextmanager
async def running_fleet(
    workdir: Path,
    convex_url: str,
    mastra_urls: Sequence[str],
    *,
    drain: float = 2.0,
    app_interval: float = 0.25,
    caddy_interval: str = "250ms",
    app_delay: float = 0.05,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[Fleet]:
    """One container per Mastra URL (app-1 on 127.0.0.2 using the first, app-2 on 127.0.0.3
    the second, ... at most five) behind the real Caddy, every sidecar ready; `settings` go
    to every sidecar's environment. Whatever blocks runs in a thread, so servers in the
    caller's event loop (Mastra proxies) keep answering. Everything is stopped on exit (by
    PID, apps by their own handle), the sidecars as a rolling restart stops them, so that
    each leaves the fleet in Convex with its last sync."""
    if not 1 <= len(mastra_urls) <= len(HOSTS):
        raise ValueError(f"one to {len(HOSTS)} containers, not {len(mastra_urls)}")
    hosts = HOSTS[: len(mastra_urls)]
    for host in hosts:
        if not loopback.bindable(host):
            raise RuntimeError(
                f"cannot bind {host}: each container needs its own loopback address "
                "(Linux routes all of 127.0.0.0/8 to lo; macOS needs `ifconfig lo0 alias`)"
            )
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    app_port = loopback.free_port_on(*hosts)
    sidecar_port = loopback.free_port_on(*hosts)
    site_port = procs.free_port()
    admin_port = procs.free_port()
    metrics_port = procs.free_port()
    async with contextlib.AsyncExitStack() as stack:
        apps = []
        for index, host in enumerate(hosts, start=1):
            app = loopback.AppServer(f"app-{index}", host, app_port, delay=app_delay)
            stack.push_async_callback(asyncio.to_thread, app.kill)
            apps.append(await asyncio.to_thread(app.start))
        spawned: list[procs.Proc] = []  # stopped together, as they are spawned
        stack.push_async_callback(asyncio.to_thread, stop_sidecars, spawned, drain=drain)
        instances = []
        for app, mastra_url in zip(apps, mastra_urls, strict=True):
            env = sidecar_env(
                convex_url, mastra_url, app, drain=drain, interval=app_interval, settings=settings
            )
            log = workdir / f"sidecar-{app.name}.log"
            spawned.append(spawn_daemon(env, log, host=app.host, port=sidecar_port))
            instances.append(env["SIDECAR_INSTANCE"])
        containers = []
        for app, sidecar, instance in zip(apps, spawned, instances, strict=True):
            await asyncio.to_thread(wait_up, sidecar, "live")
            containers.append(Container(app.name, app.host, app, sidecar, instance))
        for container in containers:
            await wait_for(container.sidecar.url + "/ready", 200, within=15)
        admin = f"http://127.0.0.1:{admin_port}"
        placeholders = {
            "SITE_ADDRESS": f"http://127.0.0.1:{site_port}",
            "APP_UPSTREAMS": " ".join(f"{host}:{app_port}" for host in hosts),
            "SIDECAR_PORT": str(sidecar_port),
            "CADDY_HEALTH_INTERVAL": caddy_interval,
            "CADDY_ADMIN": f"127.0.0.1:{admin_port}",
            "CADDY_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        }
        proxy = await asyncio.to_thread(start_caddy, workdir, placeholders, admin)
        stack.push_async_callback(asyncio.to_thread, proxy.stop)
        yield Fleet(
            url=f"http://127.0.0.1:{site_port}",
            admin=admin,
            metrics=f"http://127.0.0.1:{metrics_port}",
            caddy=proxy,
            containers=containers,
            drain_seconds=drain,
            caddy_interval=_seconds(caddy_interval),
        )


def stop_sidecars(sidecars: Sequence[procs.Proc], *, drain: float) -> None:
    """SIGTERM every sidecar we started at once (by PID), and give each its drain period and
    the last sync that takes it out of the fleet's counts in Convex (an instance killed
    without it counts as live for its TTL, and would skew the next test's shared-outage
    count); one still running after that is stopped at once."""
    for sidecar in sidecars:
        if sidecar.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sidecar.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + drain + 5.0  # the drain, then the last sync's call
    for sidecar in sidecars:
        try:
            sidecar.popen.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            stop_at_once(sidecar)


async def until(condition: Callable[[], bool], *, within: float, step: float = 0.01) -> float:
    """Wait until `condition()` holds; return how long that took, or raise after `within`."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"still not so after {within}s: {condition}")
        await asyncio.sleep(step)


def sigterm(proc: procs.Proc) -> None:
    """SIGTERM one process we started, by its PID (a rolling restart's first step)."""
    os.kill(proc.popen.pid, signal.SIGTERM)


def _seconds(duration: str) -> float:
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    return float(duration.removesuffix("s"))


# Steady client traffic ----------------------------------------------------------------------


@dataclass
class Hit:
    """One client request through Caddy: when it was sent (monotonic), how it went."""

    sent: float
    method: str
    status: int | None
    body: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


async def steady_traffic(
    url: str, stop: asyncio.Event, *, rate: float, max_requests: int, each_within: float = 10.0
) -> list[Hit]:
    """Send requests at `rate` per second (GET and POST in turn; each on its own, not waiting
    for the previous one, each given `each_within` seconds) until `stop` is set or
    `max_requests` were sent; every result."""
    loop = asyncio.get_running_loop()
    client_timeout = aiohttp.ClientTimeout(total=each_within)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:

        async def one(n: int) -> Hit:
            method = "GET" if n % 2 == 0 else "POST"
            sent = time.monotonic()
            try:
                if method == "GET":
                    request = session.get(f"{url}/page/{n}")
                else:
                    request = session.post(f"{url}/api/order", json={"n": n})
                async with request as resp:
                    return Hit(sent, method, resp.status, await resp.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                return Hit(sent, method, None, "", f"{type(exc).__name__}: {exc}")

        tasks: list[asyncio.Task[Hit]] = []
        started = loop.time()
        while not stop.is_set() and len(tasks) < max_requests:
            tasks.append(asyncio.create_task(one(len(tasks))))
            pause = started + len(tasks) / rate - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(pause, 0))
        return list(await asyncio.gather(*tasks))


# Readiness of every sidecar over time -------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The /ready status of every container's sidecar, asked at one moment (`at`, monotonic;
    a status None: no answer in time)."""

    at: float
    statuses: tuple[int | None, ...]

    @property
    def unready(self) -> int:
        """How many did not answer 200."""
        return sum(status != 200 for status in self.statuses)


async def sample_readiness(
    containers: Sequence[Container], stop: asyncio.Event, *, every: float = 0.05, most: int
) -> list[Sample]:
    """Ask every sidecar's /ready at once, every `every` seconds, until `stop` is set or
    `most` samples were taken; every sample."""
    samples: list[Sample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:

        async def status(container: Container) -> int | None:
            try:
                async with session.get(container.sidecar.url + "/ready") as resp:
                    await resp.read()
                    return resp.status
            except (aiohttp.ClientError, TimeoutError):
                return None

        while not stop.is_set() and len(samples) < most:
            at = time.monotonic()
            statuses = await asyncio.gather(*(status(c) for c in containers))
            samples.append(Sample(at, tuple(statuses)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(every - (time.monotonic() - at), 0.005))
    return samples


async def live_instances(convex_url: str) -> list[str]:
    """The instances Convex counts in the fleet now, as `health-sidecar fleet --json` lists
    them (run as a subprocess without blocking the event loop)."""
    env = {
        "CONVEX_URL": convex_url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "HEALTH_SIDECAR_OPERATOR_SECRET": OPERATOR_SECRET,
    }
    proc = await cli_async("fleet", "--json", env=env)
    assert proc.returncode in (0, 1), (
        f"health-sidecar fleet exited {proc.returncode}: {proc.stderr}"
    )
    return [member["instance"] for member in json.loads(proc.stdout)["instances"]]
