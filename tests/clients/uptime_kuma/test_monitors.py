"""The Uptime Kuma monitors of the docs, judged as Uptime Kuma judges them.

`monitors.json` holds the monitors (Uptime Kuma's own field names); docs/deploy/uptime-kuma.md
shows each verbatim. `kuma_eval.mjs` evaluates them with the real `jsonata` package and
Uptime Kuma's comparison rules: 1.23 (`louislam/uptime-kuma:1`: `result.toString() ===
expectedValue`) and 2.0 (`jsonPathOperator` "=="), against real bodies of a running sidecar.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support import faults, procs
from tests.support.daemon import start_daemon
from tests.support.procs import SECRET

HERE = Path(__file__).resolve().parent
EVALUATOR = HERE / "kuma_eval.mjs"
DOC = procs.ROOT / "docs" / "deploy" / "uptime-kuma.md"
MONITORS: list[dict[str, Any]] = json.loads((HERE / "monitors.json").read_text())["monitors"]
BY_NAME = {m["name"]: m for m in MONITORS}

# The headers Uptime Kuma's HTTP monitors send (server/model/monitor.js): a browser-like
# Accept, so /health answers its plain seed JSON, not application/health+json.
KUMA_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.9",
    "User-Agent": "Uptime-Kuma/1.23.16",
}
# Uptime Kuma's labels for the monitor types, as the docs' table names them.
TYPE_LABELS = {
    "http": "HTTP(s)",
    "keyword": "HTTP(s) - Keyword",
    "json-query": "HTTP(s) - Json Query",
}

INTERVAL = 0.5
TIMEOUT = 0.4
UP, DOWN = True, False

# What each sidecar monitor must say in each scenario (every monitor on /health or /ready).
EXPECTED: dict[str, dict[str, bool]] = {
    # Just started: the non-critical `search` check has no result yet ("unknown"): /health
    # 200 "degraded", ready (search is not critical).
    "search unknown": {
        "sidecar health": UP,
        "sidecar ready": UP,
        "all ok (keyword)": DOWN,
        "mastra not failing (inverted keyword)": UP,
        "overall status": DOWN,
        "convex": UP,
        "mastra": UP,
        "app": UP,
        "store": UP,
        "every service ok": DOWN,
        "ready (JSON)": UP,
    },
    "healthy": {
        "sidecar health": UP,
        "sidecar ready": UP,
        "all ok (keyword)": UP,
        "mastra not failing (inverted keyword)": UP,
        "overall status": UP,
        "convex": UP,
        "mastra": UP,
        "app": UP,
        "store": UP,
        "every service ok": UP,
        "ready (JSON)": UP,
    },
    # A non-critical check fails: /health 200 "degraded", still ready.
    "degraded": {
        "sidecar health": UP,
        "sidecar ready": UP,
        "all ok (keyword)": DOWN,
        "mastra not failing (inverted keyword)": UP,
        "overall status": DOWN,
        "convex": UP,
        "mastra": UP,
        "app": UP,
        "store": UP,
        "every service ok": DOWN,
        "ready (JSON)": UP,
    },
    # The app beside the sidecar fails (critical): /health 503, /ready 503.
    "app failing": {
        "sidecar health": DOWN,
        "sidecar ready": DOWN,
        "all ok (keyword)": DOWN,
        "mastra not failing (inverted keyword)": UP,
        "overall status": DOWN,
        "convex": UP,
        "mastra": UP,
        "app": DOWN,
        "store": UP,
        "every service ok": DOWN,
        "ready (JSON)": DOWN,
    },
    # The real Mastra server is stopped: /health 503 with services.mastra "error".
    "mastra down": {
        "sidecar health": DOWN,
        "sidecar ready": DOWN,
        "all ok (keyword)": DOWN,
        "mastra not failing (inverted keyword)": DOWN,
        "overall status": DOWN,
        "convex": UP,
        "mastra": DOWN,
        "app": UP,
        "store": UP,
        "every service ok": DOWN,
        "ready (JSON)": DOWN,
    },
}
SIDECAR_MONITORS = [m["name"] for m in MONITORS if ":8099/" in m["url"]]


@dataclass(frozen=True)
class Answer:
    status: int
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


async def kuma_judge(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run every case through kuma_eval.mjs in one node process."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(EVALUATOR),
        cwd=procs.ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps({"cases": cases}).encode()), 60)
    assert proc.returncode == 0, err.decode()
    results: list[dict[str, Any]] = json.loads(out)["results"]
    assert [r["id"] for r in results] == [c["id"] for c in cases]
    return results


async def fetch(session: aiohttp.ClientSession, url: str) -> Answer:
    async with session.get(url, headers=KUMA_HEADERS) as resp:
        return Answer(resp.status, (await resp.read()).decode())


async def capture(
    base: str,
    done: Callable[[Answer, Answer], bool],
    *,
    within: float = 20.0,
) -> dict[str, Answer]:
    """Poll /health and /ready until `done(health, ready)`; return both answers."""
    deadline = time.monotonic() + within
    last: tuple[Answer, Answer] | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while time.monotonic() < deadline:
            health = await fetch(session, base + "/health")
            ready = await fetch(session, base + "/ready")
            last = (health, ready)
            if done(health, ready):
                return {"/health": health, "/ready": ready}
            await asyncio.sleep(0.05)
    raise AssertionError(f"the sidecar never reached the scenario within {within}s; last: {last}")


def services_are(**wanted: str) -> Callable[[Answer, Answer], bool]:
    def done(health: Answer, _: Answer) -> bool:
        services = health.json()["services"]
        return all(services.get(name) == value for name, value in wanted.items())

    return done


def doc_section(title: str) -> str:
    """The section of DOC under a heading named `title`, up to the next heading of its
    level or higher."""
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        found = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if found and found.group(2) == title:
            level = len(found.group(1))
            body = []
            for rest in lines[i + 1 :]:
                heading = re.match(r"^(#+)\s", rest)
                if heading and len(heading.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f'{DOC.relative_to(procs.ROOT)} has no section headed "{title}"')


@pytest.fixture
def mastra(tmp_path: Path) -> Iterator[procs.Proc]:
    """A real Mastra server of this test's own, so the test can stop it."""
    with procs.mastra(tmp_path / "mastra.log") as proc:
        yield proc


async def test_monitors_judge_real_sidecar_bodies(
    convex_local: procs.Proc, mastra: procs.Proc, tmp_path: Path
) -> None:
    """A real sidecar (dev/convex-local, a real Mastra, an app and a non-critical `search`
    check) goes search unknown (its first probe hangs) -> degraded (search fails) -> healthy
    -> app failing (503) -> Mastra stopped (503). In each state every monitor of
    monitors.json, judged by the real jsonata under both Uptime Kuma 1.23's and 2.0's rules
    on the exact bodies and status codes, is UP or DOWN as EXPECTED says, and the two
    versions agree; the keyword text Uptime Kuma matches (JSON.stringify of the parsed body)
    is byte for byte the body the sidecar sent."""
    ok = faults.respond(200, b'{"ok":true}')
    failing = faults.respond(500, b'{"ok":false}')
    answers: dict[str, dict[str, Answer]] = {}
    async with faults.fault_server(ok) as app, faults.fault_server(faults.hang()) as search:
        # The first `search` probe hangs until its 4 s timeout: "unknown" until then.
        checks = [
            {
                "name": "search",
                "kind": "http",
                "target": search.url + "/health",
                "critical": False,
                "interval": 4,
                "timeout": 4,
                "failures_before_fail": 1,
            }
        ]
        env = {
            "CONVEX_URL": convex_local.url,
            "MASTRA_URL": mastra.url,
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_APP_URL": app.url + "/api/health",
            "SIDECAR_CHECKS": json.dumps(checks),
            "SIDECAR_INSTANCE": "kuma-monitors",
            "SIDECAR_INTERVAL": str(INTERVAL),
            "SIDECAR_TIMEOUT": str(TIMEOUT),
            "SIDECAR_DRAIN_SECONDS": "0",
        }
        # Started from a thread: the fault servers in this loop must answer its first probes.
        daemon = await asyncio.to_thread(start_daemon, env, tmp_path / "daemon.log")
        try:

            def all_ok(health: Answer, ready: Answer) -> bool:
                return (health.status, health.json()["status"], ready.status) == (200, "ok", 200)

            answers["search unknown"] = await capture(
                daemon.url,
                services_are(search="unknown", convex="ok", mastra="ok", app="ok", store="ok"),
            )
            search.behaviour = failing
            answers["degraded"] = await capture(daemon.url, services_are(search="error"))
            search.behaviour = ok
            answers["healthy"] = await capture(daemon.url, all_ok)
            app.behaviour = failing
            answers["app failing"] = await capture(
                daemon.url, lambda h, r: services_are(app="error")(h, r) and r.status == 503
            )
            app.behaviour = ok
            await capture(daemon.url, all_ok)
            mastra.stop()
            answers["mastra down"] = await capture(
                daemon.url, lambda h, r: services_are(mastra="error")(h, r) and r.status == 503
            )
        finally:
            daemon.stop()

    # The states really are what the scenarios say (so a monitor result means something).
    shapes = {
        scenario: (a["/health"].status, a["/health"].json()["status"], a["/ready"].status)
        for scenario, a in answers.items()
    }
    assert shapes == {
        "search unknown": (200, "degraded", 200),
        "healthy": (200, "ok", 200),
        "degraded": (200, "degraded", 200),
        "app failing": (503, "error", 503),
        "mastra down": (503, "error", 503),
    }

    cases: list[dict[str, Any]] = []
    for scenario, answer in answers.items():
        for name in SIDECAR_MONITORS:
            monitor = BY_NAME[name]
            got = answer[urlsplit(monitor["url"]).path]
            cases.append(
                {
                    "id": f"{scenario} / {name}",
                    "monitor": monitor,
                    "status": got.status,
                    "body": got.body,
                }
            )
    results = await kuma_judge(cases)

    wrong = []
    for case, result in zip(cases, results, strict=True):
        scenario, name = case["id"].split(" / ")
        want = EXPECTED[scenario][name]
        for version in ("v1", "v2"):
            if result[version]["up"] is not want:
                wrong.append(f"{case['id']} [{version}]: {result[version]} (want up={want})")
        assert result["text"] == case["body"], "the body is not the compact text Kuma matches"
    assert not wrong, (
        "\n".join(wrong)
        + "\n"
        + json.dumps(
            {s: {p: a.body for p, a in ans.items()} for s, ans in answers.items()}, indent=1
        )
    )


def test_expected_table_covers_every_sidecar_monitor() -> None:
    """Every monitor of monitors.json on the sidecar has an UP/DOWN expectation in every
    scenario (a monitor added to the file must be decided here), names are unique, and each
    has the fields its type needs."""
    assert len(BY_NAME) == len(MONITORS), "monitor names must be unique"
    for scenario, table in EXPECTED.items():
        assert sorted(table) == sorted(SIDECAR_MONITORS), scenario
    for monitor in MONITORS:
        assert monitor["type"] in TYPE_LABELS, monitor
        assert monitor["accepted_statuscodes"], monitor
        if monitor["type"] == "keyword":
            assert isinstance(monitor["invertKeyword"], bool), monitor
            assert monitor["keyword"], monitor
        if monitor["type"] == "json-query":
            # Only "==": Uptime Kuma 1.23 has no operator and compares with string equality.
            assert monitor["jsonPathOperator"] == "==", monitor
            assert isinstance(monitor["expectedValue"], str), monitor


async def test_mastra_server_monitor_on_the_real_mastra(mastra_local: procs.Proc) -> None:
    """The seed guide's Mastra `/health` monitor (JSON query `success` = `true`) is UP on the
    real Mastra server's answer, under both Uptime Kuma versions' rules."""
    monitor = BY_NAME["Mastra server"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        got = await fetch(session, mastra_local.url + urlsplit(monitor["url"]).path)
    results = await kuma_judge(
        [{"id": "mastra", "monitor": monitor, "status": got.status, "body": got.body}]
    )
    assert results[0]["v1"]["up"] is True, (results, got)
    assert results[0]["v2"]["up"] is True, (results, got)


async def test_modelled_kuma_rules() -> None:
    """The evaluator reproduces Uptime Kuma's rules that the docs rely on: a boolean
    compares as the string "true" (case-sensitive); a missing key is DOWN; a status outside
    the accepted codes is DOWN before the body is looked at; a keyword matches the compact
    re-serialised JSON, even when the server pretty-printed it; an array result passes 1.23's
    toString() comparison but is DOWN in 2.0 (so no monitor of ours returns an array)."""

    def query(path: str, expected: str, codes: tuple[str, ...] = ("200-299",)) -> dict[str, Any]:
        return {
            "type": "json-query",
            "accepted_statuscodes": list(codes),
            "jsonPath": path,
            "jsonPathOperator": "==",
            "expectedValue": expected,
        }

    def keyword(word: str, invert: bool = False) -> dict[str, Any]:
        return {
            "type": "keyword",
            "accepted_statuscodes": ["200-299"],
            "keyword": word,
            "invertKeyword": invert,
        }

    body = '{"ready":true,"services":{"a":"ok","b":"ok"}}'
    pretty = '{\n  "status": "ok",\n  "services": {"convex": "ok"}\n}'
    cases = [
        ("true", query("ready", "true"), 200, body, (UP, UP)),
        ("True", query("ready", "True"), 200, body, (DOWN, DOWN)),
        ("missing", query("services.app", "ok"), 200, body, (DOWN, DOWN)),
        ("503 not accepted", query("ready", "true"), 503, body, (DOWN, DOWN)),
        ("503 accepted", query("ready", "true", ("200-299", "503")), 503, body, (UP, UP)),
        ("array", query("services.*", "ok,ok"), 200, body, (UP, DOWN)),
        ("pretty", keyword('"status":"ok"'), 200, pretty, (UP, UP)),
        ("case", keyword('"Status":"ok"'), 200, pretty, (DOWN, DOWN)),
        ("inverted", keyword('"convex":"ok"', invert=True), 200, pretty, (DOWN, DOWN)),
    ]
    results = await kuma_judge(
        [{"id": c[0], "monitor": c[1], "status": c[2], "body": c[3]} for c in cases]
    )
    got = {r["id"]: (r["v1"]["up"], r["v2"]["up"]) for r in results}
    assert got == {c[0]: c[4] for c in cases}
    assert results[6]["text"] == '{"status":"ok","services":{"convex":"ok"}}'


def test_docs_uptime_kuma_section_shows_each_monitor_verbatim() -> None:
    """docs/deploy/uptime-kuma.md has an "Uptime Kuma" section whose table has one row per
    monitor of monitors.json: | name | Uptime Kuma's type | URL | accepted status codes |
    keyword (and whether inverted) or JSON query | expected value |, the strings verbatim."""
    section = doc_section("Uptime Kuma")
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if line.lstrip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    problems = []
    for monitor in MONITORS:
        row = rows.get(monitor["name"])
        if row is None or len(row) != 6:
            problems.append(f"no 6-cell table row starting with | {monitor['name']} |")
            continue
        _, kind, url, codes, query, expected = row
        if kind != TYPE_LABELS[monitor["type"]]:
            problems.append(f"{monitor['name']}: type {kind!r}")
        if url != f"`{monitor['url']}`":
            problems.append(f"{monitor['name']}: URL {url!r}")
        if codes != ", ".join(monitor["accepted_statuscodes"]):
            problems.append(f"{monitor['name']}: accepted status codes {codes!r}")
        if monitor["type"] == "keyword":
            wanted = f"keyword `{monitor['keyword']}`" + (
                ", inverted" if monitor["invertKeyword"] else ""
            )
            if query != wanted:
                problems.append(f"{monitor['name']}: {query!r}, want {wanted!r}")
        if monitor["type"] == "json-query":
            if query != f"`{monitor['jsonPath']}`":
                problems.append(f"{monitor['name']}: JSON query {query!r}")
            if expected != f"`{monitor['expectedValue']}`":
                problems.append(f"{monitor['name']}: expected value {expected!r}")
    assert not problems, "\n".join(problems)
    assert "louislam/uptime-kuma:1" in section
