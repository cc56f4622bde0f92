"""The health store (signed `health:sync`) against dev/convex-local: the real functions of
convex/ run by convex-test behind Convex's HTTP wire format. Python signs, TypeScript verifies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import aiohttp
import pytest

from sidecar.fleetcli import all_pages
from sidecar.state import Record
from sidecar.store import (
    ClockSkew,
    ConvexClient,
    FunctionError,
    HealthStore,
    RequestRejected,
    Unauthorized,
    Unavailable,
)
from sidecar.store.messages import SyncRequest
from tests.support.procs import OPERATOR_SECRET, SECRET, Proc


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def store(
    session: aiohttp.ClientSession,
    convex: Proc,
    instance: str,
    *,
    secret: str = SECRET,
    operator_secret: str | None = None,
    clock: Callable[[], float] = time.time,
) -> HealthStore:
    client = ConvexClient(session, url=convex.url, timeout=2.0)
    return HealthStore(
        client,
        secret=secret,
        operator_secret=operator_secret,
        instance=instance,
        version="9.9.9",
        ttl_seconds=60,
        period_seconds=20,
        clock=clock,
    )


def record(check: str, status: str = "pass", output: str = "ok") -> Record:
    return Record(
        check=check,
        fingerprint=f"fp-{check}",
        status=status,  # type: ignore[arg-type]
        age_ms=1500.0,
        latency_ms=12.5,
        output=output,
        consecutive_failures=0 if status == "pass" else 3,
        consecutive_successes=4 if status == "pass" else 0,
        last_success_age_ms=1500.0 if status == "pass" else None,
    )


HELLO = {"convex": "fp-convex", "mastra": "fp-mastra"}


async def test_first_sync_then_warm_start_after_a_restart(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A new instance's hello gets no warm start; after a restart (a new hello) the stored
    records come back as written, aged by the deployment's clock, with the last sync's age."""
    s = store(session, convex_local, "hs-roundtrip")
    first = await s.sync(
        SyncRequest(records=[record("convex"), record("mastra", "fail")], hello=HELLO)
    )
    assert first.warm is None
    assert first.resend is False
    assert first.written == 2
    assert abs(first.now_ms / 1000 - time.time()) < 5
    assert first.expires_at_ms == first.now_ms + 60_000
    later = await store(session, convex_local, "hs-roundtrip").sync(SyncRequest(hello=HELLO))
    assert later.warm is not None
    assert 0 <= later.warm.confirmed_age_ms < 5_000
    by_check = {r.check: r for r in later.warm.records}
    assert sorted(by_check) == ["convex", "mastra"]
    convex = by_check["convex"]
    assert (convex.status, convex.output, convex.fingerprint) == ("pass", "ok", "fp-convex")
    assert (convex.consecutive_successes, convex.latency_ms) == (4, 12.5)
    assert isinstance(convex.consecutive_successes, int)
    assert 1500 <= convex.age_ms < 1500 + 5000
    assert by_check["mastra"].last_success_age_ms is None


async def test_hello_drops_records_of_changed_or_removed_checks(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """The configuration changed between two starts: the record of a check whose definition
    changed, and of a check that is gone, are not handed back (and are deleted)."""
    s = store(session, convex_local, "hs-prune")
    await s.sync(
        SyncRequest(records=[record("convex"), record("mastra"), record("old")], hello=HELLO)
    )
    again = await s.sync(SyncRequest(hello={"convex": "fp-convex", "mastra": "fp-elsewhere"}))
    assert again.warm is not None
    assert [r.check for r in again.warm.records] == ["convex"]
    third = await s.sync(SyncRequest(hello={"convex": "fp-convex", "mastra": "fp-mastra"}))
    assert third.warm is not None
    assert [r.check for r in third.warm.records] == ["convex"]


async def test_non_ascii_output_is_signed_and_kept(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """The signature covers the UTF-8 body: non-ASCII and non-BMP outputs verify and come back
    unchanged."""
    text = "r\u00e9ponse \N{LARGE GREEN CIRCLE} \u65e5\u672c"
    s = store(session, convex_local, "hs-unicode")
    await s.sync(SyncRequest(records=[record("convex", output=text)], hello=HELLO))
    warm = (await s.sync(SyncRequest(hello=HELLO))).warm
    assert warm is not None
    assert warm.records[0].output == text


async def test_wrong_secret_is_unauthorized_and_writes_nothing(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A signature keyed by another secret is refused (Unauthorized) and stores nothing."""
    bad = store(session, convex_local, "hs-badsecret", secret="wrong-secret-1234567")
    with pytest.raises(Unauthorized) as caught:
        await bad.sync(SyncRequest(records=[record("convex")], hello=HELLO))
    assert "signature" in str(caught.value)
    answer = await store(session, convex_local, "hs-badsecret").sync(SyncRequest(hello=HELLO))
    assert answer.warm is None  # no instance was ever stored under this name


@pytest.mark.parametrize("skew", [-31.0, 120.0])
async def test_clock_off_by_more_than_30_s_is_its_own_error(
    convex_local: Proc, session: aiohttp.ClientSession, skew: float
) -> None:
    """The deployment's clock decides: a timestamp over 30 s off is refused as ClockSkew
    (kind "clock_skew", not "unauthorized"), and the error says to check the clock."""
    s = store(session, convex_local, "hs-skew", clock=lambda: time.time() + skew)
    with pytest.raises(ClockSkew) as caught:
        await s.sync(SyncRequest(records=[record("convex")], hello=HELLO))
    assert caught.value.kind == "clock_skew"
    assert "at most 30 s): check the sidecar's clock" in str(caught.value)


async def test_the_token_of_the_hello_goes_with_every_later_sync(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A hello answers a token (64 hex), later syncs present it; when another process takes
    the name over with its own hello, the first one's sync is refused Unauthorized ("send
    hello"), it forgets its token, and its next hello is accepted with a new one."""
    first = store(session, convex_local, "hs-token")
    hello = await first.sync(SyncRequest(hello=HELLO))
    assert hello.token is not None
    assert len(hello.token) == 64
    steady = await first.sync(SyncRequest(records=[record("convex")]))
    assert (steady.token, steady.heartbeat) == (None, hello.heartbeat)
    usurper = await store(session, convex_local, "hs-token").sync(SyncRequest(hello=HELLO))
    assert usurper.token not in (None, hello.token)
    with pytest.raises(Unauthorized) as caught:
        await first.sync(SyncRequest(records=[record("mastra")]))
    assert "token does not match: send hello" in str(caught.value)
    again = await first.sync(SyncRequest(hello=HELLO))
    assert again.token not in (None, hello.token, usurper.token)


async def test_calls_in_the_same_ms_get_increasing_timestamps(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A frozen clock (two calls in one ms): each call's ts is one more than the last, so
    Convex, which takes only a newer ts than the last it accepted, refuses none."""
    frozen = time.time()
    s = store(session, convex_local, "hs-frozen", clock=lambda: frozen)
    await s.sync(SyncRequest(hello=HELLO))
    for status in ("pass", "fail", "pass"):
        assert (await s.sync(SyncRequest(records=[record("convex", status)]))).written == 1


async def test_drain_and_fleet_need_the_operator_key(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """Without an operator key the store refuses to sign drain and fleet (no call is made);
    signed with the fleet key by a forged store they are refused; with it they work, and a
    drain's answer says which key signed it."""
    await store(session, convex_local, "hs-operated").sync(SyncRequest(hello=HELLO))
    with pytest.raises(Unauthorized, match="HEALTH_SIDECAR_OPERATOR_SECRET is not set"):
        await store(session, convex_local, "cli").fleet()
    forged = store(session, convex_local, "cli", operator_secret=SECRET)
    with pytest.raises(Unauthorized, match="signed with the fleet key"):
        await forged.drain(
            drain=True, instances=None, reason="x", by="security@bastion", for_ms=None
        )
    operator = store(session, convex_local, "cli", operator_secret=OPERATOR_SECRET)
    named = ["hs-operated"]
    drained = await operator.drain(
        drain=True, instances=named, reason="r", by="ops@test", for_ms=None
    )
    assert drained == ("hs-operated",)
    report = await operator.fleet()
    [member] = [m for m in report.members if m.instance == "hs-operated"]
    assert member.drain is not None
    assert (member.drain.by, member.drain.key) == ("ops@test", "operator")
    assert report.joins_last_hour is not None
    assert report.joins_last_hour >= 1
    undrained = await operator.drain(
        drain=False, instances=named, reason=None, by="ops@test", for_ms=None
    )
    assert undrained == ("hs-operated",)


async def test_invalid_payload_is_a_function_error_with_its_code(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A refused payload (a negative age: a result from the future) comes back as
    FunctionError with code invalid_argument."""
    s = store(session, convex_local, "hs-future")
    with pytest.raises(FunctionError) as caught:
        await s.sync(SyncRequest(records=[replace(record("convex"), age_ms=-5000.0)], hello=HELLO))
    assert caught.value.code == "invalid_argument"


async def test_the_secret_is_never_sent(
    convex_local: Proc,
) -> None:
    """What goes over the wire: instance, ts, sig (64 hex) and the body; not the secret."""
    sent: list[bytes] = []

    async def trace(
        _: aiohttp.ClientSession, __: object, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        sent.append(params.chunk)

    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(trace)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as traced:
        await store(traced, convex_local, "hs-wire").sync(
            SyncRequest(records=[record("convex")], hello=HELLO)
        )
    [body] = [json.loads(chunk) for chunk in sent]
    args = body["args"]
    assert sorted(args) == ["body", "instance", "sig", "ts"]
    assert len(args["sig"]) == 64
    assert SECRET not in b"".join(sent).decode()


async def test_unknown_function_is_a_function_error(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """Functions not deployed: Convex answers a function error (redacted in production)."""
    client = ConvexClient(session, url=convex_local.url, timeout=2.0)
    with pytest.raises(FunctionError):
        await client.query("health:nope", {})


@pytest.mark.parametrize(
    ("status", "error", "said"),
    [
        (429, Unavailable, "HTTP 429"),
        (503, Unavailable, "HTTP 503"),
        (500, Unavailable, "HTTP 500"),
        (413, RequestRejected, "too large"),
    ],
)
async def test_the_stand_ins_overload_answers_are_typed(
    convex_local: Proc, session: aiohttp.ClientSession, status: int, error: type, said: str
) -> None:
    """dev/convex-local answering as a deployment (or the proxy before it) does when it is
    overloaded or refuses the size: each becomes its typed error, and the next call, the
    fault gone, succeeds."""
    fault = {"status": status, "times": 1, "paths": ["/api/mutation"]}
    async with session.post(f"{convex_local.url}/_dev/faults", json=fault) as resp:
        assert resp.status == 200
    s = store(session, convex_local, f"hs-fault-{status}")
    with pytest.raises(error) as caught:
        await s.sync(SyncRequest(hello=HELLO))
    assert said in str(caught.value)
    assert (await s.sync(SyncRequest(hello=HELLO))).resend is False


async def test_fleet_pages_through_every_instance(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """`health:fleet` answers at most 100 instances a call with a cursor to go on from; the
    CLI's loop (`all_pages`) lists every one, once, and says the report is complete."""
    names = [f"hs-page-{i:03d}" for i in range(120)]
    for name in names:
        await store(session, convex_local, name).sync(SyncRequest(hello=HELLO))
    operator = store(session, convex_local, "cli", operator_secret=OPERATOR_SECRET)
    first = await operator.fleet()
    assert len(first.members) <= 100
    assert first.cursor is not None
    report = await all_pages(operator)
    listed = [m.instance for m in report.members if m.instance.startswith("hs-page-")]
    assert listed == names
    assert report.cursor is None
    assert report.live is not None


async def test_the_recount_runs_in_the_stand_in_and_answers_come_from_it(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """Two instances fail a panic check: about half a second later the recount (scheduled by
    the first change) has written the verdict; the next failing sync answers it, with `live`,
    and `health:fleet` lists it as an outage. One leaves: the recount drops it."""
    a, b = (store(session, convex_local, f"hs-count-{x}") for x in "ab")
    check = "hs-count-check"
    for s in (a, b):
        await s.sync(SyncRequest(hello=HELLO))
        await s.sync(SyncRequest(panic=(check,), hold_ms=30_000))
    operator = store(session, convex_local, "cli", operator_secret=OPERATOR_SECRET)
    deadline = time.monotonic() + 5
    outages: dict[str, tuple[int, int]] = {}
    while time.monotonic() < deadline and outages.get(check, (0, 0))[0] < 2:
        await asyncio.sleep(0.1)
        outages = dict((await operator.fleet()).outages)
    assert outages[check][0] == 2
    answer = await a.sync(SyncRequest(panic=(check,), hold_ms=30_000))
    assert answer.outages[check] == outages[check]
    assert answer.live is not None
    assert answer.live >= 2
    await b.sync(SyncRequest(leaving=True))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and outages.get(check, (0, 0))[0] != 1:
        await asyncio.sleep(0.1)
        outages = dict((await operator.fleet()).outages)
    assert outages[check][0] == 1
