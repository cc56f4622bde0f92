"""The witness endpoint served in process (aiohttp_client): refusals before any work, the
statuses-only answer, the hurry hook; and the asker against real witness servers on
127.0.0.1: a shared failure keeps this instance ready naming the peers, peers that reach
Convex or that do not answer leave it a local fault, and the second question catches peers
that had not probed yet."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.fleet import Outage, Watched
from sidecar.metrics import Metrics
from sidecar.monitor import Monitor
from sidecar.peers import Peer
from sidecar.result import CheckResult
from sidecar.server import create_app
from sidecar.snapshot import StoreState
from sidecar.witness import (
    HEADER,
    MAX_BODY,
    PATH,
    Buckets,
    Desk,
    Door,
    Question,
    answer,
    parse_account,
    question,
    tally,
)
from sidecar.witnesses import MAX_ANSWER, Witnesses
from tests.modules.test_app import closed_port
from tests.modules.test_fleet import APP, GRACE, MASTRA, fleet

ClientFactory = Callable[[web.Application], Coroutine[Any, Any, TestClient[Any, Any]]]
SECRET = "fleet-secret-0123456789abcdef"
BURST = 10
DOWN = StoreState(status="error", kind="unavailable", message="cannot reach http://convex:3210")


class Instance:
    """One sidecar's Monitor with a fake clock, its witness desk, and the checks it hurried."""

    def __init__(self, name: str, start: float) -> None:
        self.now = [start]
        metrics = Metrics(checks=["mastra", "app"], version="0")
        self.monitor = Monitor(
            instance=name,
            version="0",
            checks=(MASTRA, APP),
            metrics=metrics,
            fleet=fleet(at=start),
            clock=lambda: self.now[0],
        )
        self.hurried: list[str] = []
        # A slow bucket (the burst, then one a second), so that real time refills none mid-test.
        self.desk = Desk(Door(SECRET, buckets=Buckets(rate=1.0, burst=BURST)), tarpit=0.05)
        self.desk.hurry = self.hurried.append
        self.app = create_app(self.monitor, registry=metrics.registry, witness_desk=self.desk)
        self.see("app", "pass")

    def see(self, check: str, status: str) -> None:
        self.monitor.record(
            check,
            CheckResult(
                status=status,  # type: ignore[arg-type]
                output=f"{check} said {status} at http://{check}.internal/?token=s3cret",
                latency=0.01,
                observed_at=self.now[0] - 0.01,  # it ended now: asked about, it has happened
            ),
        )

    def fail_mastra(self) -> None:
        """Mastra passed, then failed twice (its threshold): fail since now."""
        self.see("mastra", "pass")
        self.now[0] += 1
        self.see("mastra", "fail")
        self.see("mastra", "fail")


async def post(
    client: TestClient[Any, Any], body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    response = await client.post(PATH, data=body, headers=headers)
    assert response.headers["Cache-Control"] == "no-store"
    return response.status, json.loads(await response.read())


@pytest.fixture
async def served(aiohttp_client: ClientFactory) -> tuple[Instance, TestClient[Any, Any]]:
    one = Instance("web-1", time.time())
    one.fail_mastra()
    one.monitor.set_store(DOWN)
    return one, await aiohttp_client(one.app)


async def test_a_signed_question_is_answered_with_statuses_only(
    served: tuple[Instance, TestClient[Any, Any]],
) -> None:
    one, client = served
    body, headers = question(SECRET, instance="web-2", checks=["mastra", "app", "gone"])
    status, doc = await post(client, body, headers)
    assert status == 200
    assert doc == {
        "instance": "web-1",
        "reaches_convex": False,
        "checks": {"mastra": "fail", "app": "pass", "gone": "unknown"},
    }
    raw = json.dumps(doc)
    for leak in ("http", "token", "s3cret", "said", SECRET):
        assert leak not in raw
    assert one.hurried == ["mastra", "app"]  # the checks it has: probe them soon


def test_a_witness_whose_subscription_dropped_cannot_tell_whether_it_reaches_convex() -> None:
    """Its last sync said ok, but the subscription it held has dropped since (Convex may be
    gone for it too): `reaches_convex` None, and the asker counts it among those that may yet
    see the failure, so a failure just noticed here stays pending (the second question);
    subscribed, or never subscribing: a "yes"."""
    one = Instance("web-1", time.time())
    one.monitor.set_store(StoreState(status="ok"))
    asked = Question(instance="web-2", ts=0, checks=("mastra",), nonce="n")
    assert answer(one.monitor.snapshot, asked)["reaches_convex"] is True
    watched = Watched(at=one.now[0], subscribed=True)
    one.monitor.apply_watch(watched)
    assert answer(one.monitor.snapshot, asked)["reaches_convex"] is True
    one.monitor.apply_watch(replace(watched, subscribed=False))
    doc = answer(one.monitor.snapshot, asked)
    assert doc["reaches_convex"] is None
    seen = tally(["mastra"], [parse_account(doc, ["mastra"])], at=one.now[0])["mastra"]
    assert (seen.possible, seen.answered) == (2, 2)


async def test_refusals_come_before_any_work(
    served: tuple[Instance, TestClient[Any, Any]],
) -> None:
    """Unsigned, forged, stale, replayed: 401; malformed: 400; oversized: 413; nothing is
    hurried by any of them."""
    one, client = served
    body, headers = question(SECRET, instance="web-2", checks=["mastra"])
    assert (await post(client, body, {}))[0] == 401
    _, forged = question("not-the-fleet-secret-0123", instance="web-2", checks=["mastra"])
    assert (await post(client, body, forged))[0] == 401
    stale_body, stale = question(SECRET, instance="web-2", checks=["mastra"], now=time.time() - 31)
    assert (await post(client, stale_body, stale)) == (
        401,
        {"error": "stale: ts is more than 30 s from this instance's clock"},
    )
    assert (await post(client, b'{"instance":"web-2"}', {HEADER: "0" * 64}))[0] == 400
    big = b"{" + b" " * MAX_BODY + b"}"
    assert (await post(client, big, headers))[0] == 413
    assert one.hurried == []
    assert (await post(client, body, headers))[0] == 200
    assert (await post(client, body, headers)) == (401, {"error": "replayed"})
    assert one.hurried == ["mastra"]


async def test_an_oversized_body_without_a_length_is_refused_413(
    served: tuple[Instance, TestClient[Any, Any]],
) -> None:
    """Chunked, so no Content-Length to judge: read no further than the bound."""
    _, client = served

    async def chunks() -> Any:
        for _ in range(64):
            yield b" " * 1024

    _, headers = question(SECRET, instance="web-2", checks=["mastra"])
    response = await client.post(PATH, data=chunks(), headers=headers)
    assert response.status == 413


async def test_the_rate_per_address_is_429(
    served: tuple[Instance, TestClient[Any, Any]],
) -> None:
    _, client = served
    burst = BURST
    statuses = [(await post(client, b"{}", {}))[0] for _ in range(burst + 2)]
    assert statuses[:burst] == [401] * burst
    assert statuses[burst:] == [429, 429]
    assert (await client.get("/live")).status == 200  # the load balancer's paths are untouched


async def test_only_post_and_only_with_a_desk(
    served: tuple[Instance, TestClient[Any, Any]], aiohttp_client: ClientFactory
) -> None:
    _, client = served
    response = await client.get(PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    metrics = Metrics(checks=[], version="0")
    bare = Monitor(instance="x", version="0", checks=(), metrics=metrics)
    without = await aiohttp_client(create_app(bare, registry=metrics.registry))
    assert (await without.post(PATH, data=b"{}")).status == 404


async def fleet_of(aiohttp_client: ClientFactory, *names: str) -> tuple[list[Instance], list[Peer]]:
    """Instances with their witness endpoints served on 127.0.0.1, Convex down for all."""
    start = time.time()
    instances = [Instance(name, start) for name in names]
    peers = []
    for one in instances:
        client = await aiohttp_client(one.app)
        peers.append(
            Peer(instance=one.monitor.snapshot.instance, url=f"http://127.0.0.1:{client.port}")
        )
        one.monitor.set_store(DOWN)
    for one in instances:  # named by the last sync answer, before Convex went away
        one.monitor.apply_fleet(replace(one.monitor.snapshot.fleet, peers=tuple(peers)))
    return instances, peers


def asker(one: Instance, session: aiohttp.ClientSession, peers: list[Peer]) -> Witnesses:
    """`one`'s asker, with `peers` as its last sync answer named them (itself included:
    Convex's rotating handful may name it; it never asks itself)."""
    one.monitor.apply_fleet(replace(one.monitor.snapshot.fleet, peers=tuple(peers)))
    return Witnesses(
        monitor=one.monitor,
        session=session,
        secret=SECRET,
        instance=one.monitor.snapshot.instance,
        clock=lambda: one.now[0],
    )


def past_the_window(one: Instance) -> None:
    one.now[0] += 10 + GRACE + 1
    one.see("mastra", "fail")
    one.see("app", "pass")


async def test_a_failure_the_peers_share_keeps_the_instance_ready(
    aiohttp_client: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    (a, b, c), peers = await fleet_of(aiohttp_client, "a", "b", "c")
    for one in (a, b, c):
        one.fail_mastra()
    async with aiohttp.ClientSession() as session:
        witnesses = asker(a, session, peers)
        await witnesses.step()
    snap = a.monitor.snapshot
    outage = snap.shared_outages["mastra"]
    assert (outage.failing, outage.live, outage.witnesses) == (3, 3, ("b", "c"))
    past_the_window(a)
    assert a.monitor.snapshot.ready  # excused by the witnesses, not by the pending window
    fleet_doc = a.monitor.snapshot.health_document(details=True)["fleet"]
    assert "witnessed by peers b, c" in fleet_doc["shared_outages"]["mastra"]
    assert b.hurried == ["mastra"]
    out = capsys.readouterr().out
    assert out.count("shared outage: mastra failing on 3 of 3 instances that answered") == 1
    assert "witnessed by peers b, c; Convex unreachable" in out
    shared = a.monitor.snapshot  # sidecar_shared_outage{check} says so too
    assert "mastra" in shared.shared_outages
    # Two intervals after the answer, it no longer counts (no refresh: the peers are gone).
    a.now[0] += 2 * 10
    a.see("mastra", "fail")
    a.see("app", "pass")
    assert not a.monitor.snapshot.ready
    assert capsys.readouterr().out.count("shared outage over: mastra") == 1


async def test_peers_that_reach_convex_make_it_a_local_fault(aiohttp_client: ClientFactory) -> None:
    (a, b, c), peers = await fleet_of(aiohttp_client, "a", "b", "c")
    for one in (a, b, c):
        one.fail_mastra()
    for one in (b, c):
        one.monitor.set_store(StoreState(status="ok"))
    async with aiohttp.ClientSession() as session:
        await asker(a, session, peers).step()
    past_the_window(a)
    assert not a.monitor.snapshot.ready
    assert a.monitor.snapshot.reasons == ("mastra is fail",)


async def test_peers_that_do_not_answer_leave_it_a_local_fault(
    aiohttp_client: ClientFactory,
) -> None:
    (a,), _ = await fleet_of(aiohttp_client, "a")
    a.fail_mastra()
    gone = [Peer(instance=n, url=f"http://127.0.0.1:{closed_port()}") for n in ("b", "c")]
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await asker(a, session, gone).step()
        assert time.monotonic() - started < 5  # bounded: each peer within the timeout
    assert a.monitor.snapshot.fleet.witnessed["mastra"].answered == 1
    past_the_window(a)
    assert not a.monitor.snapshot.ready


def witness_answering(doc: dict[str, Any]) -> web.Application:
    """A witness endpoint that answers every question with `doc`."""

    async def witness(_: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_post(PATH, witness)
    return app


async def test_an_answer_longer_than_the_bound_is_not_counted(
    aiohttp_client: ClientFactory,
) -> None:
    """Two witnesses give the same account; one pads it past MAX_ANSWER bytes: only the
    other one counts."""
    (a,), _ = await fleet_of(aiohttp_client, "a")
    a.fail_mastra()
    peers = []
    for name, padding in (("b", "x" * MAX_ANSWER), ("c", "")):
        account = {"instance": name, "reaches_convex": False, "checks": {"mastra": "fail"}}
        client = await aiohttp_client(witness_answering({**account, "padding": padding}))
        peers.append(Peer(instance=name, url=f"http://127.0.0.1:{client.port}"))
    async with aiohttp.ClientSession() as session:
        await asker(a, session, peers).step()
    seen = a.monitor.snapshot.fleet.witnessed["mastra"]
    assert (seen.answered, seen.peers) == (2, ("c",))


async def test_the_second_question_catches_peers_that_had_not_probed_yet(
    aiohttp_client: ClientFactory,
) -> None:
    """The first to fail hears "pass"; its question hurried the others, which then fail;
    asked again late in the pending window, they say so: shared, ready past the window."""
    (a, b, c), peers = await fleet_of(aiohttp_client, "a", "b", "c")
    for one in (a, b, c):
        one.see("mastra", "pass")
    a.fail_mastra()
    async with aiohttp.ClientSession() as session:
        witnesses = asker(a, session, peers)
        await witnesses.step()
        assert "mastra" not in a.monitor.snapshot.shared_outages
        assert b.hurried == ["mastra"]
        assert c.hurried == ["mastra"]
        for one in (b, c):
            one.fail_mastra()
        a.now[0] += 1
        await witnesses.step()  # not due yet: nothing asked
        assert b.hurried == ["mastra"]
        a.now[0] += 10 + GRACE - 1 - 2  # late in the window
        await witnesses.step()
        assert b.hurried == ["mastra", "mastra"]
    assert a.monitor.snapshot.shared_outages["mastra"].witnesses == ("b", "c")
    past_the_window(a)
    assert a.monitor.snapshot.ready


async def test_when_convex_answers_the_witness_hands_over_to_its_count(
    aiohttp_client: ClientFactory,
) -> None:
    """Convex back: its first answer still counts the failure on this instance alone (its
    recount of the others comes later), and the check fails here until its next probe. The
    sync answer's view carries the witness over (`witness_in_force`, as the Syncer builds it):
    the instance stays ready; two intervals after the question, the witness counts no more
    and Convex's count decides; the asker asks no more meanwhile."""
    (a, b), peers = await fleet_of(aiohttp_client, "a", "b")
    a.fail_mastra()
    b.fail_mastra()
    async with aiohttp.ClientSession() as session:
        witnesses = asker(a, session, peers)
        await witnesses.step()
        asked = a.now[0]
        assert "mastra" in a.monitor.snapshot.shared_outages
        a.monitor.set_store(StoreState(status="ok"))
        a.now[0] += 10 + GRACE + 1  # the next sync answer, past the pending window
        snap = a.monitor.snapshot
        a.monitor.apply_fleet(
            fleet(
                at=a.now[0],
                outages={"mastra": Outage(failing=1, live=2)},  # before Convex's recount
                witnessed=snap.fleet.witness_in_force(snap.states, a.now[0]),
            )
        )
        await witnesses.step()
    assert b.hurried == ["mastra"]  # asked once: Convex answers, nobody is asked again
    assert a.monitor.snapshot.ready
    assert a.monitor.snapshot.shared_outages["mastra"].witnesses == ("b",)
    a.now[0] = asked + 2 * 10 + 0.5  # two intervals after the question: Convex's count decides
    a.see("mastra", "fail")
    a.see("app", "pass")
    assert a.monitor.snapshot.reasons == ("mastra is fail",)
    snap = a.monitor.snapshot
    assert snap.fleet.witness_in_force(snap.states, a.now[0]) == {}


async def test_peers_that_recover_first_do_not_withdraw_a_shared_verdict_at_once(
    aiohttp_client: ClientFactory,
) -> None:
    """Convex returns for the peers first: asked again, they pass and reach it. The last
    shared answer counts out its two intervals (no instance leaves because the others noticed
    the return sooner), and the check is probed again soon (hurried); after that, failing
    still, it is a fault of this instance's own."""
    (a, b, c), peers = await fleet_of(aiohttp_client, "a", "b", "c")
    for one in (a, b, c):
        one.fail_mastra()
    hurried: list[str] = []
    async with aiohttp.ClientSession() as session:
        a.monitor.apply_fleet(replace(a.monitor.snapshot.fleet, peers=tuple(peers)))
        witnesses = Witnesses(
            monitor=a.monitor,
            session=session,
            secret=SECRET,
            instance="a",
            clock=lambda: a.now[0],
            hurry=hurried.append,
        )
        await witnesses.step()
        asked = a.now[0]
        assert a.monitor.snapshot.shared_outages["mastra"].witnesses == ("b", "c")
        for one in (b, c):  # Convex is back for them, and Mastra passes there
            one.see("mastra", "pass")
            one.monitor.set_store(StoreState(status="ok"))
        a.now[0] += 10 + GRACE + 1  # past the pending window; asked again (once an interval)
        a.see("mastra", "fail")
        await witnesses.step()
    assert b.hurried == ["mastra", "mastra"]  # asked twice
    assert hurried == ["mastra"]
    assert a.monitor.snapshot.ready
    assert a.monitor.snapshot.shared_outages["mastra"].witnesses == ("b", "c")
    a.now[0] = asked + 2 * 10 + 0.5  # the last shared answer has run out
    a.see("mastra", "fail")
    a.see("app", "pass")
    assert a.monitor.snapshot.reasons == ("mastra is fail",)
