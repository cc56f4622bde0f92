"""Fault matrix, mastra column: every fault on a mastra check whose target is a switchable proxy
in front of the real Mastra server (dev/mastra). One daemon, one check per fault."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support import procs
from tests.support.matrix import (
    HTTP_FAULTS,
    Cell,
    Group,
    assert_whole_life,
    check_config,
    daemon_env,
    expected_changes,
    run_cell,
    running_group,
)
from tests.support.switch import SwitchServer, switch_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

WHY = {
    "garbage": "/health must be JSON saying success",
    "huge_body": "/health over 64 KiB is refused, not parsed",
    "wrong_content_type": "an HTML page is not Mastra's JSON",
}
CELLS = [Cell("mastra", fault, "fail", WHY.get(fault, "")) for fault in ("refuse", *HTTP_FAULTS)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, SwitchServer] = {}
        for cell in CELLS:
            server = switch_server(upstream=mastra_local.url)
            targets[cell.check] = await stack.enter_async_context(server)
        checks = [check_config(c.check, "mastra", targets[c.check].url) for c in CELLS]
        env = daemon_env(convex_local.url, "faults-mastra", checks)
        log = tmp_path_factory.mktemp("faults-mastra") / "daemon.log"
        async with running_group(env, log, targets) as running:
            yield running


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
async def test_cell(group: Group, cell: Cell) -> None:
    """A healthy mastra check (real Mastra behind the proxy) meets the fault at runtime: it
    turns fail within thresholds x interval + timeout while the endpoints stay fast, logs
    one line per change, and passes again within one interval + timeout of the fault
    clearing."""
    await run_cell(group, cell)


async def test_whole_life(group: Group) -> None:
    """After every cell: no background task died, no check loop crashed, /live stayed 200,
    and each check logged exactly its cell's changes."""
    await assert_whole_life(group, expected_changes(CELLS))
