"""The daemon's whole life, then a search of everything it printed and served for its secrets.

One life (the `life` fixture, run once for the module): a daemon with a random Convex secret, a
random details token, a check header carrying a token and a check URL carrying a query token
starts, passes, fails (the app answers 500, Mastra refuses connections), drains on SIGTERM and
exits; a second daemon runs with a wrong secret (the store refuses it). Collected: both
daemons' stdout and stderr; `/health` (and aliases) plain, `?verbose` from loopback, `?verbose`
with the token, health+json with and without verbose, a 400; `/ready`, `/live`, `/metrics` as
text and as OpenMetrics, at every phase; what the daemon stored in Convex; and the command line:
`config`, `check`, every `--help`, `--version`, and bad configurations that still carry the
secrets, through both `config` and `run`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import procs
from tests.support.daemon import cli_async, start_daemon
from tests.support.leaks import CONVEX_SECRET, Recorder, find, make_secret
from tests.support.switch import Forward, SwitchServer

WRONG_SECRET = make_secret("wrong")
DETAILS_TOKEN = make_secret("dtok")
HEADER_TOKEN = make_secret("hdr")
QUERY_TOKEN = make_secret("qry").replace("+", "P").replace("/", "S")  # URL-safe as written
HEALTH_JSON = "application/health+json"
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


@dataclass
class Life:
    """Everything collected (source -> text) and the servers the checks talked to."""

    collected: dict[str, str] = field(default_factory=dict)
    servers: dict[str, Recorder] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)


def forms_of_health(path: str) -> list[tuple[str, dict[str, str]]]:
    auth = {"Authorization": f"Bearer {DETAILS_TOKEN}"}
    return [
        (path, {}),
        (f"{path}?verbose", {}),
        (f"{path}?verbose=1", auth),
        (path, {"Accept": HEALTH_JSON}),
        (f"{path}?verbose", {"Accept": HEALTH_JSON}),
        (f"{path}?verbose", {**auth, "Accept": HEALTH_JSON}),
        (f"{path}?verbose=maybe", auth),
    ]


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    *(
        ("GET", p, h)
        for base in ("/health", "/healthz", "/api/health")
        for p, h in forms_of_health(base)
    ),
    *(("GET", p, {}) for p in ("/ready", "/readyz", "/api/ready", "/live", "/livez", "/nope")),
    ("GET", "/metrics", {}),
    ("GET", "/metrics", {"Accept": OPENMETRICS}),
    ("GET", "/metrics", {"Accept-Encoding": "gzip"}),
    ("HEAD", "/health?verbose", {}),
    ("POST", "/health", {}),
]


async def served(base: str, phase: str, life: Life) -> None:
    """Every form of every endpoint, status, headers and body, into `life.collected`."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for method, path, headers in REQUESTS:
            async with session.request(method, base + path, headers=headers) as resp:
                body = await resp.text(errors="replace")
                head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
                key = f"{phase} {method} {path} {sorted(headers)}"
                life.collected[key] = f"{resp.status}\n{head}\n\n{body}"


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.read() or b"null")


async def until(what: str, probe: Any, within: float = 15.0) -> None:
    """Await `probe()` until it returns true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def cli(env: dict[str, str], *args: str) -> str:
    """`python -m sidecar ARGS` in a clean environment: its exit code, stdout and stderr."""
    proc = await cli_async(*args, env=env)
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def check_config(life: Life, tmp: Path) -> Path:
    """The TOML file: a check whose header carries a token, one whose URL carries a query token,
    and one whose server redirects to another origin (the header must not follow)."""
    s = life.servers
    path = tmp / "sidecar.toml"
    path.write_text(
        f"""
[[checks]]
name = "partner"
kind = "http"
target = "{s["partner"].url}/status"
headers = {{ Authorization = "Bearer {HEADER_TOKEN}", X-Api-Key = "{HEADER_TOKEN}" }}
critical = false

[[checks]]
name = "webhook"
kind = "http"
target = "{s["webhook"].url}/ping?token={QUERY_TOKEN}"
critical = false

[[checks]]
name = "redirector"
kind = "http"
target = "{s["redirector"].url}/old"
headers = {{ Authorization = "Bearer {HEADER_TOKEN}" }}
critical = false
failures_before_fail = 1
""",
        encoding="utf-8",
    )
    return path


async def live_a_life(own_convex: procs.Proc, tmp: Path) -> Life:
    life = Life()
    s = life.servers
    sent: list[str] = []

    def record(request: dict[str, Any]) -> dict[str, Any]:
        sent.append(json.dumps(request))
        return request

    # Every request body the daemons send to Convex passes through this proxy and is kept.
    convex = await SwitchServer(upstream=own_convex.url).start()
    convex.inject(Forward(record))
    s["app"] = await Recorder().start()
    s["mastra"] = await Recorder(body=b'{"success":true}').start()
    s["partner"] = await Recorder().start()
    s["webhook"] = await Recorder().start()
    s["sink"] = await Recorder().start()
    s["redirector"] = await Recorder(status=302).start()
    s["redirector"].location = f"{s['sink'].url}/landing"
    try:
        await one_life(convex, tmp, life)
    finally:
        for server in s.values():
            await server.stop()
        await convex.stop()
    life.collected["request bodies sent to Convex"] = "\n".join(sent)
    # What the deployment logged (a real one quotes a refused call's arguments in its logs).
    life.collected["convex deployment log"] = own_convex.output()
    return life


async def one_life(convex: SwitchServer, tmp: Path, life: Life) -> None:
    s = life.servers
    config = check_config(life, tmp)
    env = {
        "CONVEX_URL": convex.url,
        "MASTRA_URL": s["mastra"].url,
        "HEALTH_SIDECAR_SECRET": CONVEX_SECRET,
        "SIDECAR_DETAILS_TOKEN": DETAILS_TOKEN,
        "SIDECAR_APP_URL": s["app"].url + "/api/health",
        "SIDECAR_CONFIG": str(config),
        "SIDECAR_INSTANCE": "secrets-life",
        "SIDECAR_INTERVAL": "0.5",
        "SIDECAR_TIMEOUT": "0.4",
        "SIDECAR_DRAIN_SECONDS": "3",
        "SIDECAR_LOG_LEVEL": "debug",
    }
    log = tmp / "daemon.log"
    daemon = await asyncio.to_thread(start_daemon, env, log)
    try:
        base = daemon.url
        await served(base, "starting", life)

        async def ready() -> bool:
            return (await get_json(base + "/ready"))[0] == 200

        await until("ready", ready)
        await until("partner and webhook probed", _probed(s["partner"], s["webhook"]))
        await served(base, "passing", life)

        s["app"].status = 500
        await s["mastra"].stop()

        async def failing() -> bool:
            status, body = await get_json(base + "/health?verbose")
            checks = body.get("checks", {})
            return status == 503 and all(
                checks.get(name, {}).get("status") == "fail" for name in ("app", "mastra")
            )

        await until("app and mastra fail", failing)
        await served(base, "failing", life)
        port = base.rpartition(":")[2]
        life.collected["cli check (running)"] = await cli({}, "check", "--port", port)
        life.collected["cli check --ready (running)"] = await cli(
            {}, "check", "--ready", "--port", port
        )

        os.kill(daemon.popen.pid, signal.SIGTERM)

        async def draining() -> bool:
            status, body = await get_json(base + "/ready")
            return status == 503 and "draining" in body.get("reasons", [])

        await until("draining", draining, within=2)
        await served(base, "draining", life)
        life.exit_codes["life"] = await asyncio.to_thread(daemon.popen.wait, 15)
        life.collected["cli check (stopped)"] = await cli({}, "check", "--port", port)
    finally:
        daemon.stop()
        life.collected["daemon log"] = daemon.output()

    await wrong_secret_life(convex, tmp, life)
    await command_line(env, life)
    life.collected["documents in convex"] = await documents_in_convex(convex.url)


def _probed(*servers: Recorder) -> Any:
    async def probe() -> bool:
        return all(server.heads for server in servers)

    return probe


async def wrong_secret_life(convex: SwitchServer, tmp: Path, life: Life) -> None:
    """A second daemon whose secret Convex refuses: the store fails from the start."""
    env = {
        "CONVEX_URL": convex.url,
        "HEALTH_SIDECAR_SECRET": WRONG_SECRET,
        "SIDECAR_DETAILS_TOKEN": DETAILS_TOKEN,
        "SIDECAR_INSTANCE": "secrets-wrong",
        "SIDECAR_INTERVAL": "0.5",
        "SIDECAR_TIMEOUT": "0.4",
        "SIDECAR_DRAIN_SECONDS": "0",
        "SIDECAR_LOG_LEVEL": "debug",
    }
    daemon = await asyncio.to_thread(start_daemon, env, tmp / "wrong.log")
    try:

        async def refused() -> bool:
            _, body = await get_json(daemon.url + "/health?verbose")
            return bool(body.get("store", {}).get("error") == "unauthorized")

        await until("the store refuses the wrong secret", refused)
        await served(daemon.url, "wrong-secret", life)
        os.kill(daemon.popen.pid, signal.SIGTERM)
        life.exit_codes["wrong"] = await asyncio.to_thread(daemon.popen.wait, 15)
    finally:
        daemon.stop()
        life.collected["wrong-secret daemon log"] = daemon.output()


async def command_line(env: dict[str, str], life: Life) -> None:
    """`config`, help and version, and bad configurations that still carry every secret."""
    env = {**env, "SIDECAR_HOST": "127.0.0.1"}  # should one of them start after all
    bad_checks = json.dumps(
        [
            {
                "name": "x",
                "kind": "http",
                "target": f"http://127.0.0.1:9/?token={QUERY_TOKEN}",
                "headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
                "body_regex": "(",
            }
        ]
    )
    runs: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
        "config": (env, ("config",)),
        "--help": (env, ("--help",)),
        "--version": (env, ("--version",)),
        "run --help": (env, ("run", "--help")),
        "config --help": (env, ("config", "--help")),
        "check --help": (env, ("check", "--help")),
        "bad port: config": ({**env, "SIDECAR_PORT": "70000"}, ("config",)),
        "bad port: run": ({**env, "SIDECAR_PORT": "70000"}, ("run",)),
        "bad check: config": ({**env, "SIDECAR_CHECKS": bad_checks}, ("config",)),
        "bad check: run": ({**env, "SIDECAR_CHECKS": bad_checks}, ("run",)),
        "checks not JSON: run": ({**env, "SIDECAR_CHECKS": bad_checks[:-30]}, ("run",)),
        "short token: run": (
            {**env, "SIDECAR_DETAILS_TOKEN": "short", "SIDECAR_PORT": "x"},
            ("run",),
        ),
        "unknown command": (env, ("serve",)),
    }
    outputs = await asyncio.gather(*(cli(e, *args) for e, args in runs.values()))
    for name, output in zip(runs, outputs, strict=True):
        life.collected[f"cli {name}"] = output


async def documents_in_convex(url: str) -> str:
    """What the daemons stored: every document of the sidecar's tables (the stand-in's dev
    route)."""
    async with aiohttp.ClientSession() as session:
        texts = []
        for table in ("sidecarInstances", "sidecarHeartbeats", "sidecarResults"):
            async with session.get(f"{url}/_dev/tables/{table}") as resp:
                texts.append(await resp.text())
        return "\n".join(texts)


@pytest.fixture(scope="module")
def life(own_convex: procs.Proc, tmp_path_factory: pytest.TempPathFactory) -> Life:
    """One whole life, lived once for the module."""
    return asyncio.run(live_a_life(own_convex, tmp_path_factory.mktemp("life")))


def test_the_life_covers_every_phase(life: Life) -> None:
    """The collection is worth searching: the daemon passed, failed, drained and exited 0;
    details were served with the token and from loopback; the wrong secret was refused; the
    header and query tokens really went out to their checks; `config` and the bad
    configurations ran."""
    c = life.collected
    assert life.exit_codes == {"life": 0, "wrong": 0}
    assert c["passing GET /ready []"].endswith('{"ready":true}')
    failing = json.loads(c["failing GET /health?verbose []"].split("\n\n", 1)[1])
    assert failing["services"]["app"] == failing["services"]["mastra"] == "error"
    with_token = json.loads(c["failing GET /health?verbose=1 ['Authorization']"].split("\n\n")[1])
    assert with_token["checks"]["app"]["output"] == "HTTP 500"
    assert '"draining"' in c["draining GET /ready []"]
    assert '"unauthorized"' in c["wrong-secret GET /health?verbose []"]
    assert "sidecar_check_up" in c["failing GET /metrics ['Accept']"]
    for message in ("check app is fail", "draining", "stopped"):
        assert message in c["daemon log"]
    assert "store failing" in c["wrong-secret daemon log"]
    assert f"Authorization: Bearer {HEADER_TOKEN}" in "".join(life.servers["partner"].heads)
    assert f"token={QUERY_TOKEN}" in "".join(life.servers["webhook"].heads)
    assert life.servers["redirector"].heads
    assert c["cli config"].startswith("exit 0")
    for name in ("bad port: run", "bad check: run", "checks not JSON: run", "short token: run"):
        assert c[f"cli {name}"].startswith("exit 2"), c[f"cli {name}"]
    assert '"secrets-life"' in c["documents in convex"]
    sent = c["request bodies sent to Convex"]
    assert '"path": "health:sync"' in sent
    assert '"sig": ' in sent
    assert "bad signature" in c["convex deployment log"]


def assert_nowhere(life: Life, secret: str) -> None:
    leaks = find(life.collected, secret)
    assert not leaks, "found in:\n" + "\n".join(leaks)


def test_convex_secret_never_printed_or_served(life: Life) -> None:
    """Neither the Convex secret nor the wrong one appears anywhere, in any encoding."""
    assert_nowhere(life, CONVEX_SECRET)
    assert_nowhere(life, WRONG_SECRET)


def test_details_token_never_printed_or_served(life: Life) -> None:
    """The details token appears nowhere, in any encoding."""
    assert_nowhere(life, DETAILS_TOKEN)


def test_check_header_token_never_printed_or_served(life: Life) -> None:
    """A token in a check's `headers` (Authorization and X-Api-Key) appears nowhere: `config`
    shows the header names only."""
    assert_nowhere(life, HEADER_TOKEN)


def test_check_header_never_follows_a_redirect_to_another_origin(life: Life) -> None:
    """The `redirector` check's server redirects to another port (another origin): the probe
    refuses to follow, so the server there never sees the request or its Authorization."""
    assert life.servers["redirector"].heads
    assert life.servers["sink"].heads == []


def test_check_url_query_token_never_printed_or_served(life: Life) -> None:
    """A token in a check URL's query string (`?token=...`, as push/heartbeat URLs carry) is
    allowed by the configuration; it must appear nowhere the daemon prints or serves."""
    assert_nowhere(life, QUERY_TOKEN)
