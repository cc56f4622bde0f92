"""The health-store API against dev/convex-local (the real functions of convex/ run by
convex-test behind Convex's HTTP wire format)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidecar.store import (
    CheckRecord,
    ConvexClient,
    FunctionError,
    HealthStore,
    Unauthorized,
)
from tests.conftest import SECRET
from tests.support.procs import Proc


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def store(
    session: aiohttp.ClientSession, convex: Proc, instance: str, secret: str = SECRET
) -> HealthStore:
    client = ConvexClient(session, url=convex.url, timeout=2.0)
    return HealthStore(client, secret=secret, instance=instance, ttl_seconds=60)


def record(check: str, status: str = "pass", at: float = 1_800_000_000_000.0) -> CheckRecord:
    return CheckRecord(
        check=check,
        status=status,  # type: ignore[arg-type]
        observed_at_ms=at,
        latency_ms=12.5,
        output=f"{check} {status}",
        consecutive_failures=0 if status == "pass" else 3,
        consecutive_successes=4 if status == "pass" else 0,
        last_success_at_ms=at - 1000,
    )


NOW = 1_800_000_000_000.0


async def test_report_then_read_back(convex_local: Proc, session: aiohttp.ClientSession) -> None:
    """A round written with report comes back from instance with every field, as floats and
    ints where they belong, and expiresAt = now + TTL."""
    s = store(session, convex_local, "hs-roundtrip")
    expires = await s.report([record("convex"), record("mastra", "fail")], now_ms=NOW)
    assert expires == NOW + 60_000
    rows = await s.instance_results(now_ms=NOW + 1)
    assert [r.record for r in rows] == [record("convex"), record("mastra", "fail")]
    assert all(r.instance == "hs-roundtrip" and r.expires_at_ms == expires for r in rows)
    assert isinstance(rows[0].record.consecutive_successes, int)


async def test_report_upserts(convex_local: Proc, session: aiohttp.ClientSession) -> None:
    """A second report for the same check replaces the first."""
    s = store(session, convex_local, "hs-upsert")
    await s.report([record("convex")], now_ms=NOW)
    await s.report([record("convex", "fail")], now_ms=NOW + 10)
    rows = await s.instance_results(now_ms=NOW + 20)
    assert [(r.record.check, r.record.status) for r in rows] == [("convex", "fail")]


async def test_expired_rows_are_not_returned(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """Rows past their TTL are invisible to instance and fleet for a later `now`."""
    s = store(session, convex_local, "hs-expiry")
    await s.report([record("convex")], now_ms=NOW)
    assert await s.instance_results(now_ms=NOW + 61_000) == []
    fleet = await s.fleet(now_ms=NOW + 61_000)
    assert all(r.instance != "hs-expiry" for r in fleet)


async def test_fleet_sees_every_instance(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """fleet returns the unexpired rows of all instances."""
    now = NOW + 5_000_000
    for name in ("hs-fleet-a", "hs-fleet-b"):
        await store(session, convex_local, name).report([record("app")], now_ms=now)
    fleet = await store(session, convex_local, "hs-fleet-a").fleet(now_ms=now + 1)
    assert {"hs-fleet-a", "hs-fleet-b"} <= {r.instance for r in fleet}


async def test_wrong_secret_is_unauthorized_and_writes_nothing(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A wrong secret maps to Unauthorized on every call and leaves no row."""
    bad = store(session, convex_local, "hs-badsecret", secret="wrong-secret-123456")
    with pytest.raises(Unauthorized):
        await bad.report([record("convex")], now_ms=NOW)
    with pytest.raises(Unauthorized):
        await bad.instance_results(now_ms=NOW)
    with pytest.raises(Unauthorized):
        await bad.fleet(now_ms=NOW)
    with pytest.raises(Unauthorized):
        await bad.claim("mastra", now_ms=NOW, fresh_ms=1000, lease_ms=1000)
    assert await store(session, convex_local, "hs-badsecret").instance_results(now_ms=NOW) == []


async def test_validator_error_is_a_function_error(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """An argument the validator refuses comes back as FunctionError, not a crash."""
    client = ConvexClient(session, url=convex_local.url, timeout=2.0)
    with pytest.raises(FunctionError) as caught:
        await client.query("health:instance", {"secret": SECRET, "now": "soon", "instance": "x"})
    assert "ArgumentValidationError" in str(caught.value)


async def test_handler_refusal_carries_error_data(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """A ConvexError thrown by the handler (an empty batch) carries its code."""
    s = store(session, convex_local, "hs-empty")
    with pytest.raises(FunctionError) as caught:
        await s.report([], now_ms=NOW)
    assert caught.value.code == "invalid_argument"


async def test_unknown_function_is_a_function_error(
    convex_local: Proc, session: aiohttp.ClientSession
) -> None:
    """Functions not deployed: Convex answers a function error naming the function."""
    client = ConvexClient(session, url=convex_local.url, timeout=2.0)
    with pytest.raises(FunctionError) as caught:
        await client.query("health:nope", {})
    assert "Could not find public function" in str(caught.value)


async def test_claim(convex_local: Proc, session: aiohttp.ClientSession) -> None:
    """claim: one of many concurrent callers gets the lease; once a fresh result exists it is
    handed out instead of a lease."""
    now = time.time() * 1000
    check = f"shared_{int(now)}"
    stores = [store(session, convex_local, f"hs-claim-{i}") for i in range(10)]
    claims = await asyncio.gather(
        *(s.claim(check, now_ms=now, fresh_ms=5000, lease_ms=5000) for s in stores)
    )
    assert sum(c.granted for c in claims) == 1
    winner = next(s for s, c in zip(stores, claims, strict=True) if c.granted)
    await winner.report([record(check, at=now)], now_ms=now)
    later = await stores[0].claim(check, now_ms=now + 10, fresh_ms=5000, lease_ms=5000)
    assert later.granted is False
    assert later.result is not None
    assert later.result.instance == winner.instance
