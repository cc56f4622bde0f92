"""Details of `/health` are never shown to a caller outside loopback without the details token,
tested with a real peer address outside loopback: a network namespace of the test's own joined
by a veth pair (10.200.x.y/30, on this machine only). The daemon listens on this side of the
pair; the requests come from inside the namespace."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import netns, procs
from tests.support.abuse import daemon_env
from tests.support.daemon import start_daemon

pytestmark = pytest.mark.serial

TOKEN = "remote-details-token-ABCDEFGHIJ0123"
HEALTH_JSON = "application/health+json"
DETAIL_KEYS = {"checks", "instance", "version", "ready", "draining", "store"}


@pytest.fixture(scope="module")
def ns() -> Iterator[netns.Namespace]:
    """A namespace with a veth pair; removed afterwards (checked)."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(f"no network namespace for a non-loopback peer: {reason}")
    with netns.namespace() as space:
        yield space
    assert netns.gone(space), f"{space.name} or its veth pair is still there"


@pytest.fixture(scope="module")
def remote(
    ns: netns.Namespace,
    convex_local: procs.Proc,
    mastra_local: procs.Proc,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[procs.Proc]:
    """A ready daemon with a details token, listening on the host side of the veth pair."""
    env = {**daemon_env(convex_local, mastra_local, "remote-token"), "SIDECAR_DETAILS_TOKEN": TOKEN}
    yield from ready_on_host_side(ns, env, tmp_path_factory)


@pytest.fixture(scope="module")
def remote_without_token(
    ns: netns.Namespace,
    convex_local: procs.Proc,
    mastra_local: procs.Proc,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[procs.Proc]:
    """The same without SIDECAR_DETAILS_TOKEN."""
    env = daemon_env(convex_local, mastra_local, "remote-no-token")
    env.pop("SIDECAR_DETAILS_TOKEN")
    yield from ready_on_host_side(ns, env, tmp_path_factory)


def ready_on_host_side(
    ns: netns.Namespace, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.Proc]:
    """The daemon with `env` on the host side of the veth pair, ready as seen from inside the
    namespace; stopped afterwards."""
    proc = start_daemon(env, tmp_path_factory.mktemp("remote") / "daemon.log", host=ns.host_ip)
    try:
        wait_ready_from(ns, proc)
        yield proc
    finally:
        proc.stop()


def ask(ns: netns.Namespace, daemon: procs.Proc, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    """Send `requests` ({"path", "method", "headers"}) from inside the namespace."""
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    done = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "tests.support.rawhttp", host, port],
        input=json.dumps(list(requests)),
        capture_output=True,
        text=True,
        cwd=procs.ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers: list[dict[str, Any]] = json.loads(done.stdout)
    return answers


def wait_ready_from(ns: netns.Namespace, daemon: procs.Proc) -> None:
    for _ in range(60):
        if ask(ns, daemon, {"path": "/ready"})[0]["status"] == 200:
            return
        subprocess.run(["sleep", "0.25"], check=True)
    raise AssertionError("the daemon did not turn ready")


def has_details(answer: dict[str, Any]) -> bool:
    """True when the body carries any per-check detail."""
    body = answer["body"]
    if not body:
        return False
    doc = json.loads(body)
    if DETAIL_KEYS & set(doc) and "services" in doc:
        return True
    checks = doc.get("checks") if isinstance(doc.get("checks"), dict) else {}
    return any("output" in e for entries in checks.values() for e in entries)


def assert_refused(answer: dict[str, Any], what: str) -> None:
    """403, a JSON error (no body for HEAD), nothing of the details."""
    assert answer["status"] == 403, f"{what}: {answer['status']} {answer['body'][:300]}"
    if answer["body"]:
        assert "error" in json.loads(answer["body"]), what
    assert not has_details(answer), what


def test_plain_health_from_outside_loopback(ns: netns.Namespace, remote: procs.Proc) -> None:
    """From 10.200.x.2: `/health` (and its aliases) 200 in the seed's shape without details;
    `Accept: application/health+json` without verbose 200 in the IETF format without any
    check's output; `?verbose=0` is the plain body, not a 403."""
    answers = ask(
        ns,
        remote,
        {"path": "/health"},
        {"path": "/healthz"},
        {"path": "/api/health"},
        {"path": "/health?verbose=0"},
        {"path": "/health?verbose=false"},
        {"path": "/health", "headers": {"Accept": HEALTH_JSON}},
    )
    for answer in answers[:5]:
        assert answer["status"] == 200, answer
        assert set(json.loads(answer["body"])) == {"status", "timestamp", "services"}
    ietf = answers[5]
    assert ietf["status"] == 200
    assert ietf["headers"]["content-type"].startswith(HEALTH_JSON)
    doc = json.loads(ietf["body"])
    assert doc["checks"], doc
    assert not has_details(ietf), doc


VERBOSE_FORMS: list[dict[str, Any]] = [
    {"path": "/health?verbose"},
    {"path": "/health?verbose="},
    {"path": "/health?verbose=1"},
    {"path": "/health?verbose=true"},
    {"path": "/health?verbose=0&verbose=1"},
    {"path": "/healthz?verbose"},
    {"path": "/api/health?verbose"},
    {"path": "/health?verbose", "headers": {"Accept": HEALTH_JSON}},
    {"path": "/health?verbose=1", "headers": {"Accept": f"text/html, {HEALTH_JSON};q=0.9"}},
    {"path": "/health?verbose", "method": "HEAD"},
]


def test_verbose_from_outside_loopback_without_token_is_403(
    ns: netns.Namespace, remote: procs.Proc
) -> None:
    """From 10.200.x.2 without a token every spelling of `?verbose` - aliases, health+json,
    HEAD - answers 403 with a JSON error and no details."""
    for form, answer in zip(VERBOSE_FORMS, ask(ns, remote, *VERBOSE_FORMS), strict=True):
        assert_refused(answer, str(form))


def test_token_opens_details_from_outside_loopback(ns: netns.Namespace, remote: procs.Proc) -> None:
    """From 10.200.x.2 with `Authorization: Bearer <token>`: `?verbose` 200 with per-check
    details, health+json with verbose carries each check's output."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    plain, ietf = ask(
        ns,
        remote,
        {"path": "/health?verbose", "headers": auth},
        {"path": "/health?verbose", "headers": {**auth, "Accept": HEALTH_JSON}},
    )
    assert plain["status"] == 200, plain
    doc = json.loads(plain["body"])
    assert set(doc["checks"]) == {"convex", "mastra"}
    assert doc["checks"]["mastra"]["output"] == "health: success"
    assert ietf["status"] == 200, ietf
    assert has_details(ietf)


BASIC = base64.b64encode(f":{TOKEN}".encode()).decode()
WRONG_TOKENS = [
    {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer"},
    {"Authorization": ""},
    {"Authorization": f"Basic {BASIC}"},
    {"Authorization": f"Token {TOKEN}"},
    {"X-Details-Token": TOKEN},
    {"Cookie": f"details_token={TOKEN}"},
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Real-IP": "127.0.0.1"},
    {"Forwarded": "for=127.0.0.1"},
    {"Host": "localhost"},
]
QUERY_TOKENS = [
    f"/health?verbose&token={TOKEN}",
    f"/health?verbose&access_token={TOKEN}",
    f"/health?verbose&details_token={TOKEN}",
    f"/health?verbose&Authorization=Bearer%20{TOKEN}",
]


def test_wrong_or_misplaced_token_is_403(ns: netns.Namespace, remote: procs.Proc) -> None:
    """From 10.200.x.2: a wrong token, a prefix or an extension of the right one, an empty
    `Bearer `, another scheme, the token in another header, a cookie or the query string, and
    headers claiming a loopback origin (X-Forwarded-For, Forwarded, Host) all get 403."""
    forms = [{"path": "/health?verbose", "headers": h} for h in WRONG_TOKENS]
    forms += [{"path": p} for p in QUERY_TOKENS]
    for form, answer in zip(forms, ask(ns, remote, *forms), strict=True):
        assert_refused(answer, str(form))


def test_bearer_scheme_is_case_insensitive(ns: netns.Namespace, remote: procs.Proc) -> None:
    """RFC 9110 section 11.1: the authentication scheme is case-insensitive, so
    `Authorization: bearer <token>` (as some clients send it) opens details like `Bearer`."""
    for scheme in ("Bearer", "bearer", "BEARER"):
        (answer,) = ask(
            ns,
            remote,
            {"path": "/health?verbose", "headers": {"Authorization": f"{scheme} {TOKEN}"}},
        )
        assert answer["status"] == 200, f"{scheme}: {answer['status']} {answer['body']}"
        assert has_details(answer)


def test_without_a_configured_token_nothing_opens_details(
    ns: netns.Namespace, remote_without_token: procs.Proc
) -> None:
    """With no SIDECAR_DETAILS_TOKEN, no Authorization value (empty, `None`, `null`, the
    other daemon's token) opens details to 10.200.x.2, while plain `/health` still answers."""
    forms = [
        {"path": "/health?verbose", "headers": {"Authorization": value}}
        for value in (
            "Bearer ",
            "Bearer None",
            "Bearer null",
            "Bearer undefined",
            f"Bearer {TOKEN}",
        )
    ]
    answers = ask(ns, remote_without_token, {"path": "/health"}, *forms)
    assert answers[0]["status"] == 200
    for form, answer in zip(forms, answers[1:], strict=True):
        assert_refused(answer, str(form))
