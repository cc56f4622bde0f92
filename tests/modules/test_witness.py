"""The peers' witness, pure (sidecar/witness.py, fleet.py): a question signed with the fleet's
secret is admitted once, within 30 s and within its address's rate, and nothing else is; the
answer holds statuses only; the tally and the decision that makes a witnessed outage shared;
the peers a sync answer names, strictly; and a panic check that just failed waiting for the
witnesses while Convex is down."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sidecar.fleet import Outage, Witnessed
from sidecar.peers import Peer
from sidecar.snapshot import StoreState
from sidecar.store.errors import BadResponse
from sidecar.store.messages import SyncRequest, sync_answer, sync_payload
from sidecar.store.signing import signature
from sidecar.witness import (
    BURST,
    HEADER,
    MAX_ASKED,
    PATH,
    RATE,
    Account,
    Buckets,
    Door,
    Question,
    Refused,
    Replays,
    answer,
    parse_account,
    question,
    tally,
)
from tests.modules.test_fleet import GRACE, T0, failing, failing_mastra, fleet

SECRET = "fleet-secret-0123456789abcdef"


def door(now: list[float], **options: object) -> Door:
    return Door(SECRET, clock=lambda: now[0], **options)  # type: ignore[arg-type]


def asked(
    checks: tuple[str, ...] = ("mastra",), *, at: float = T0, secret: str = SECRET
) -> tuple[bytes, str]:
    body, headers = question(secret, instance="web-2", checks=checks, now=at)
    return body, headers[HEADER]


def refusal(d: Door, body: bytes, signed: str | None, address: str = "10.0.0.2") -> tuple[int, str]:
    with pytest.raises(Refused) as caught:
        d.admit(address=address, signed=signed, body=body)
    return caught.value.status, caught.value.reason


def test_a_signed_fresh_question_is_admitted_once() -> None:
    """The question as the asker signs it is admitted; the same bytes again are a replay."""
    now = [T0]
    d = door(now)
    body, signed = asked(("mastra", "convex"))
    got = d.admit(address="10.0.0.2", signed=signed, body=body)
    assert (got.instance, got.checks, got.ts) == ("web-2", ("mastra", "convex"), int(T0 * 1000))
    now[0] += 5
    assert refusal(d, body, signed) == (401, "replayed")


def test_the_signature_is_the_stores_scheme_over_path_instance_ts_and_body() -> None:
    """Signed as signing.py signs the Convex calls, with this endpoint's path: the raw secret
    is nowhere in the request."""
    body, signed = asked()
    doc = json.loads(body)
    assert signed == signature(
        SECRET, path=PATH, instance="web-2", ts=doc["ts"], body=body.decode()
    )
    assert SECRET.encode() not in body
    assert SECRET not in signed


def test_unsigned_forged_or_tampered_questions_are_refused_401() -> None:
    now = [T0]
    d = door(now)
    body, signed = asked()
    assert refusal(d, body, None)[0] == 401
    assert refusal(d, body, "not-hex")[0] == 401
    other_body, forged = asked(secret="another-secret-0123456789")
    assert refusal(d, other_body, forged) == (401, "bad signature")
    tampered = body.replace(b'"mastra"', b'"convex"')
    assert refusal(d, tampered, signed) == (401, "bad signature")
    # None of these counted as seen: the genuine question is still admitted.
    assert d.admit(address="10.0.0.2", signed=signed, body=body).checks == ("mastra",)


@pytest.mark.parametrize("skew", [-30.5, 30.5, 3600.0])
def test_a_stale_question_is_refused_401(skew: float) -> None:
    """Older or newer than 30 s by this witness's clock: refused."""
    now = [T0 + skew]
    body, signed = asked(at=T0)
    status, reason = refusal(door(now), body, signed)
    assert status == 401
    assert reason.startswith("stale")


def test_within_the_window_either_way_is_fresh() -> None:
    for skew in (-29.0, 29.0):
        body, signed = asked(at=T0)
        assert door([T0 + skew]).admit(address="a", signed=signed, body=body)


def signed_raw(doc: object) -> tuple[bytes, str]:
    text = json.dumps(doc)
    ts = doc.get("ts", 0) if isinstance(doc, dict) else 0
    instance = doc.get("instance", "") if isinstance(doc, dict) else ""
    return text.encode(), signature(
        SECRET,
        path=PATH,
        instance=str(instance),
        ts=int(ts) if isinstance(ts, int) else 0,
        body=text,
    )


GOOD = {"instance": "web-2", "ts": int(T0 * 1000), "checks": ["mastra"], "nonce": "a" * 32}


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {k: v for k, v in GOOD.items() if k != "nonce"},
        {**GOOD, "extra": 1},
        {**GOOD, "instance": ""},
        {**GOOD, "instance": "x" * 201},
        {**GOOD, "ts": "1"},
        {**GOOD, "ts": True},
        {**GOOD, "checks": []},
        {**GOOD, "checks": ["c"] * (MAX_ASKED + 1)},
        {**GOOD, "checks": [1]},
        {**GOOD, "nonce": "A" * 32},
    ],
)
def test_a_malformed_question_is_refused_400(doc: object) -> None:
    body, signed = signed_raw(doc)
    assert refusal(door([T0]), body, signed)[0] == 400


def test_a_body_that_is_not_utf8_json_is_refused_400() -> None:
    for body in (b"\xff\xfe{}", b"{", b"null"):
        assert refusal(door([T0]), body, "0" * 64)[0] == 400


def test_the_rate_is_per_address_and_refills() -> None:
    """A burst of 40 per address, then 20 a second; another address has its own bucket; the
    limit is judged before the signature (an unsigned flood costs no HMAC)."""
    now = [T0]
    d = door(now)
    for _ in range(int(BURST)):
        assert refusal(d, b"{}", None, "10.0.0.9")[0] == 401
    assert refusal(d, b"{}", None, "10.0.0.9")[0] == 429
    assert refusal(d, b"{}", None, "10.0.0.8")[0] == 401
    now[0] += 1.5 / RATE  # one token and a half back
    assert refusal(d, b"{}", None, "10.0.0.9")[0] == 401
    assert refusal(d, b"{}", None, "10.0.0.9")[0] == 429


def test_the_rate_table_is_bounded() -> None:
    buckets = Buckets(rate=1, burst=1, size=3)
    for i in range(100):
        assert buckets.take(f"10.0.0.{i}", T0)
    assert len(buckets._table) == 3
    assert not buckets.take("10.0.0.99", T0)  # the most recent is remembered


def test_replays_are_remembered_for_the_window_and_bounded() -> None:
    seen = Replays(window=60, size=2)
    assert seen.first("a", T0)
    assert seen.first("b", T0)
    assert not seen.first("a", T0 + 59)
    with pytest.raises(Refused) as caught:
        seen.first("c", T0 + 59)  # full of live entries: no replay could be told
    assert caught.value.status == 429
    assert seen.first("c", T0 + 61)  # a and b expired


def test_the_answer_holds_statuses_only() -> None:
    """Names, statuses and whether Convex is reached: no output, URL, latency or secret."""
    snap = failing_mastra(fleet(at=T0), now=T0 + 1)
    snap = replace(snap, store=StoreState(status="error", kind="unavailable", message="http://x"))
    doc = answer(snap, Question(instance="web-2", ts=0, checks=("mastra", "app", "nope"), nonce=""))
    assert doc == {
        "instance": "i",
        "reaches_convex": False,
        "checks": {"mastra": "fail", "app": "pass", "nope": "unknown"},
    }
    text = json.dumps(doc)
    assert "http" not in text
    assert "m:4111" not in text
    assert (
        answer(replace(snap, store=StoreState(status="ok")), replace_q())["reaches_convex"] is True
    )
    runtime = StoreState(status="error", kind="unauthorized")
    assert answer(replace(snap, store=runtime), replace_q())["reaches_convex"] is True
    assert answer(replace(snap, store=StoreState()), replace_q())["reaches_convex"] is None


def replace_q() -> Question:
    return Question(instance="web-2", ts=0, checks=("mastra",), nonce="")


def test_an_account_is_parsed_strictly() -> None:
    ok = parse_account(
        {"instance": "b", "reaches_convex": False, "checks": {"mastra": "fail"}}, ["mastra", "x"]
    )
    assert ok == Account(
        instance="b", reaches_convex=False, statuses={"mastra": "fail", "x": "unknown"}
    )
    bad: object
    for bad in (
        [],
        {"instance": "", "reaches_convex": False, "checks": {}},
        {"instance": "b", "reaches_convex": "no", "checks": {}},
        {"instance": "b", "reaches_convex": None, "checks": []},
        {"instance": "b", "reaches_convex": None, "checks": {"mastra": "down"}},
    ):
        with pytest.raises(ValueError, match="answer"):
            parse_account(bad, ["mastra"])


def witness(name: str, status: str, reaches: bool | None = False) -> Account:
    return Account(instance=name, reaches_convex=reaches, statuses={"mastra": status})  # type: ignore[dict-item]


def test_the_tally_counts_this_instance_and_the_witnesses_that_fail_without_convex() -> None:
    seen = tally(
        ["mastra"],
        [witness("b", "fail"), witness("c", "pass"), witness("d", "fail", reaches=True)],
        at=T0,
    )
    assert seen == {"mastra": Witnessed(failing=2, answered=4, peers=("b",), at=T0, possible=3)}


@pytest.mark.parametrize(
    ("answers", "shared"),
    [
        ([witness("b", "fail")], True),  # 2 of 2
        ([witness("b", "fail"), witness("c", "pass")], True),  # 2 of 3 >= 0.5
        ([witness("b", "fail"), witness("c", "pass"), witness("d", "pass")], True),  # 2 of 4
        ([witness("b", "pass"), witness("c", "pass")], False),  # 1 of 3
        ([], False),  # none answered: 1 of 1, never shared alone
        ([witness("b", "fail", reaches=True), witness("c", "fail", reaches=True)], False),
        ([witness("b", "unknown"), witness("c", "fail", reaches=None)], True),  # 2 of 3
    ],
)
def test_the_decision(answers: list[Account], shared: bool) -> None:
    """At least 2 instances and at least the threshold of those that answered see it fail
    (the peers that reach Convex do not): a shared outage; else a local fault."""
    view = fleet(at=T0 - 5, witnessed=tally(["mastra"], answers, at=T0))
    assert (view.witnessed_outage(failing(), T0 + 1) is not None) is shared
    snap = failing_mastra(view, now=T0 + 20)  # past the pending window
    snap = replace(snap, store=StoreState(status="error", kind="unavailable"))
    assert snap.ready is shared


def test_a_witnessed_outage_names_the_peers_and_lasts_two_intervals() -> None:
    seen = Witnessed(failing=3, answered=3, peers=("b", "c"), at=T0)
    view = fleet(at=T0 - 60, witnessed={"mastra": seen})
    outage = view.witnessed_outage(failing(), T0 + 20)
    assert outage == Outage(failing=3, live=3, witnesses=("b", "c"))
    assert "witnessed by peers b, c" in outage.describe("mastra")
    assert view.witnessed_outage(failing(), T0 + 20.1) is None  # two intervals of 10 s
    snap = replace(
        failing_mastra(view, now=T0 + 15), store=StoreState(status="error", kind="unavailable")
    )
    assert snap.ready
    shown = snap.health_document(details=True)["fleet"]["shared_outages"]["mastra"]
    assert "b, c" in shown
    # The next sync answer's view has no witness: Convex's count decides again.
    assert replace(view, witnessed={}).witnessed_outage(failing(), T0 + 1) is None


def test_a_panic_check_that_just_failed_waits_for_witnesses_while_convex_is_down() -> None:
    """Store unreachable: with peers known, the pending window holds (the asker's time);
    without, out at once as before."""
    with_peers = fleet(at=T0 - 1, peers=(Peer(instance="b", url="http://b:8099"),))
    down = StoreState(status="error", kind="unavailable")
    snap = replace(failing_mastra(with_peers, now=T0 + 1), store=down)
    assert snap.ready
    assert snap.awaiting_count == ("mastra",)
    late = replace(failing_mastra(with_peers, now=T0 + 10 + GRACE + 0.5), store=down)
    assert not late.ready
    alone = replace(failing_mastra(fleet(at=T0 - 1), now=T0 + 1), store=down)
    assert not alone.ready


@pytest.mark.parametrize(
    ("answers", "waits"),
    [
        (None, True),  # not asked yet about this failure
        ([], False),  # nobody answered: a local fault at once
        ([witness("b", "pass", reaches=True), witness("c", "pass", reaches=True)], False),
        ([witness("b", "pass", reaches=True), witness("c", "pass")], True),  # 2 of 3 may
        ([witness("b", "pass"), witness("c", "pass")], True),  # cut off too, not probed yet
    ],
)
def test_a_failure_waits_for_the_witnesses_only_while_they_may_share_it(
    answers: list[Account] | None, waits: bool
) -> None:
    """Convex down, mastra just failed: the instance stays ready while the peers may yet
    call it shared, and leaves as soon as their answers rule it out."""
    peers = (Peer(instance="b", url="http://b:8099"), Peer(instance="c", url="http://c:8099"))
    seen = {} if answers is None else tally(["mastra"], answers, at=T0 + 0.5)
    view = fleet(at=T0 - 1, peers=peers, witnessed=seen)
    down = StoreState(status="error", kind="unavailable")
    snap = replace(failing_mastra(view, now=T0 + 1), store=down)
    assert snap.ready is waits
    assert snap.shared_outages == {}


ANSWER: dict[str, object] = {
    "now": 1.0,
    "expiresAt": 2.0,
    "written": 0,
    "resend": False,
    "warm": None,
    "heartbeat": "h",
    "outages": [],
    "shared": [],
    "drain": None,
}


def test_a_sync_answer_names_at_most_five_peers_strictly() -> None:
    assert sync_answer(ANSWER).peers is None  # absent: the last handful stays
    assert sync_answer({**ANSWER, "peers": None}).peers is None
    assert sync_answer({**ANSWER, "peers": []}).peers == ()
    peers = [{"instance": f"web-{i}", "url": f"http://web-{i}:8099"} for i in range(5)]
    named = sync_answer({**ANSWER, "peers": peers}).peers
    assert named is not None
    assert named[4] == Peer("web-4", "http://web-4:8099")
    for bad in (
        [*peers, {"instance": "web-9", "url": "http://web-9:8099"}],
        [{"instance": "a", "url": "ftp://a"}],
        [{"instance": "a", "url": "http://user@a"}],
        [{"instance": "a", "url": "http://a/?t=1"}],
        [{"instance": "a", "url": "http://" + "a" * 500}],
        [{"instance": "a", "url": "http://a:99999"}],
        [{"instance": "", "url": "http://a"}],
        [{"instance": "a"}],
        "http://a",
    ):
        with pytest.raises(BadResponse):
            sync_answer({**ANSWER, "peers": bad})


def test_a_sync_asks_for_peers_only_when_it_knows_none() -> None:
    asks = SyncRequest(want_peers=True)
    assert sync_payload(asks, version="0", ttl_ms=1, heartbeat="h")["wantPeers"] is True
    assert "wantPeers" not in sync_payload(SyncRequest(), version="0", ttl_ms=1, heartbeat="h")


def test_the_hello_carries_the_advertised_url_and_only_the_hello() -> None:
    hello = SyncRequest(hello={"mastra": "f"}, advertise="http://web-1:8099")
    assert (
        sync_payload(hello, version="0", ttl_ms=1, heartbeat=None)["advertise"]
        == "http://web-1:8099"
    )
    later = SyncRequest(advertise="http://web-1:8099")
    assert "advertise" not in sync_payload(later, version="0", ttl_ms=1, heartbeat="h")
    assert "advertise" not in sync_payload(
        SyncRequest(hello={}), version="0", ttl_ms=1, heartbeat=None
    )
