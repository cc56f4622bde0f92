"""Fault matrix, http column: every fault on an http check (any 2xx, no body regex: the
default a user writes) whose target is a switchable server answering `200 {"ok":true}`.
One daemon, one check per fault."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support import faults, procs
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

HARMLESS = {
    "garbage": "a 200; no body_regex, so the body is not part of the contract",
    "huge_body": "a 200; only the first 64 KiB is read",
    "wrong_content_type": "a 200; the content type is not part of the contract",
}
CELLS = [
    Cell("http", fault, "pass" if fault in HARMLESS else "fail", HARMLESS.get(fault, ""))
    for fault in ("refuse", *HTTP_FAULTS)
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, SwitchServer] = {}
        for cell in CELLS:
            server = switch_server(faults.respond(200, b'{"ok":true}'))
            targets[cell.check] = await stack.enter_async_context(server)
        checks = [
            check_config(c.check, "http", targets[c.check].url + "/api/health") for c in CELLS
        ]
        env = daemon_env(convex_local.url, "faults-http", checks)
        log = tmp_path_factory.mktemp("faults-http") / "daemon.log"
        async with running_group(env, log, targets) as running:
            yield running


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
async def test_cell(group: Group, cell: Cell) -> None:
    """A healthy http check meets the fault at runtime: it reaches the cell's state (fail, or
    pass for a 200 whose body is not part of the contract) within thresholds x interval +
    timeout while the endpoints stay fast, logs one line per change, and passes again within
    one interval + timeout of the fault clearing."""
    await run_cell(group, cell)


async def test_whole_life(group: Group) -> None:
    """After every cell: no background task died, no check loop crashed, /live stayed 200,
    and each check logged exactly its cell's changes."""
    await assert_whole_life(group, expected_changes(CELLS))
