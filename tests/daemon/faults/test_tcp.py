"""Fault matrix, tcp column: a tcp check sees only whether a connection opens, so the HTTP-level
faults reduce to two: the port refuses, or it hangs (the listener stops accepting and its
accept queue is full, so the kernel drops the SYN). One daemon, one check per fault."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support import procs
from tests.support.matrix import (
    Cell,
    Group,
    assert_whole_life,
    check_config,
    daemon_env,
    expected_changes,
    run_cell,
    running_group,
)
from tests.support.switch import TcpTarget

pytestmark = pytest.mark.asyncio(loop_scope="module")

CELLS = [
    Cell("tcp", "refuse", "fail", "nothing listens"),
    Cell("tcp", "backlog", "fail", "the connect hangs: a full accept queue drops the SYN"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    targets = {cell.check: await TcpTarget().start() for cell in CELLS}
    try:
        checks = [check_config(c.check, "tcp", targets[c.check].target) for c in CELLS]
        env = daemon_env(convex_local.url, "faults-tcp", checks)
        log = tmp_path_factory.mktemp("faults-tcp") / "daemon.log"
        async with running_group(env, log, dict(targets)) as running:
            yield running
    finally:
        for target in targets.values():
            await target.stop()


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
async def test_cell(group: Group, cell: Cell) -> None:
    """A healthy tcp check meets the fault at runtime: fail within thresholds x interval +
    timeout while the endpoints stay fast, one log line per change, and pass again within
    one interval + timeout of the port accepting again."""
    await run_cell(group, cell)


async def test_whole_life(group: Group) -> None:
    """After every cell: no background task died, no check loop crashed, /live stayed 200,
    and each check logged exactly its cell's changes."""
    await assert_whole_life(group, expected_changes(CELLS))
