"""Fault matrix, the unresolvable-name row: convex, mastra, http and tcp checks whose host is
under `.invalid` (RFC 6761: never resolves). A name cannot be made to resolve at runtime
without touching the system resolver, so these checks fail from the daemon's start and the
cells have no recovery phase. One daemon, one check per kind."""

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
    run_fault_from_start,
    running_group,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TARGETS = {
    "convex": "http://convex.health-sidecar-fault.invalid:3210",
    "mastra": "http://mastra.health-sidecar-fault.invalid:4111",
    "http": "http://app.health-sidecar-fault.invalid:3000/api/health",
    "tcp": "db.health-sidecar-fault.invalid:5432",
}
CELLS = [Cell(kind, "unresolvable", "fail", "the name never resolves") for kind in TARGETS]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    checks = [check_config(c.check, c.target, TARGETS[c.target]) for c in CELLS]
    env = daemon_env(convex_local.url, "faults-dns", checks)
    log = tmp_path_factory.mktemp("faults-dns") / "daemon.log"
    async with running_group(env, log, {}, healthy=("convex",)) as running:
        yield running


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
async def test_cell(group: Group, cell: Cell) -> None:
    """The check's host does not resolve: fail with the first probe ("cannot resolve host"),
    one log line (unknown -> fail) over several rounds, endpoints fast, nothing crashes."""
    await run_fault_from_start(group, cell)


async def test_whole_life(group: Group) -> None:
    """No background task died, no check loop crashed, /live stayed 200, and each check
    logged only its first change."""
    await assert_whole_life(group, {c.check: [] for c in CELLS})
