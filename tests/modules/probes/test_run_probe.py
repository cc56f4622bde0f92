"""`run_probe` picks the probe by kind, and a cancelled probe is cancelled, not a result."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest

from sidecar.checks import KINDS
from sidecar.probes import PROBES, run_probe
from tests.support import faults
from tests.support.probing import URL_KINDS, make_check


def test_every_kind_has_its_probe() -> None:
    """The map names each kind of the Check union once, with the probe of that kind's module
    (sidecar/probes/<kind>.py)."""
    assert sorted(PROBES) == sorted(KINDS)
    for kind, probe in PROBES.items():
        assert probe is importlib.import_module(f"sidecar.probes.{kind}").probe


@pytest.fixture
async def hanging_url() -> AsyncIterator[str]:
    async with faults.fault_server(faults.hang()) as server:
        yield server.url


@pytest.mark.parametrize("kind", URL_KINDS)
async def test_cancel_propagates(
    session: aiohttp.ClientSession, hanging_url: str, kind: str
) -> None:
    """A probe cancelled while it waits (scheduler shutdown) raises CancelledError at once."""
    await assert_cancelled_at_once(run_probe(session, make_check(kind, hanging_url)))


async def test_cancel_propagates_from_tcp(
    session: aiohttp.ClientSession, full_backlog: int
) -> None:
    """A tcp probe cancelled mid-connect (a full accept queue) is cancelled too."""
    check = make_check("tcp", f"127.0.0.1:{full_backlog}")
    await assert_cancelled_at_once(run_probe(session, check))


async def assert_cancelled_at_once(probe: Coroutine[Any, Any, object]) -> None:
    """Run `probe` for 0.1 s (it must still be waiting), cancel it: CancelledError within
    0.2 s."""
    task = asyncio.create_task(probe)
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    async with asyncio.timeout(0.2):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
