"""Fault matrix, convex column: faults on the public route `/instance_name`, on the function
runtime (`/api/*`: the check's `health:ping`; the store's `/api/mutation` gets the same fault),
and host-wide refusal.

One daemon; one convex check per cell, each through its own switchable proxy in front of
dev/convex-local, so each is "another deployment" than the store's and pings it; CONVEX_URL
(the store) is one more proxy. The built-in `convex` check probes dev/convex-local directly,
so store faults never touch it. (The store's own deployment, proven by the store's calls, is
tested in test_store.py.)
"""

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

HARMLESS_FOR_ROUTE = {
    "garbage": "/instance_name promises only a 200; the runtime query still answers",
    "huge_body": "a 200 whose first 64 KiB is read; the runtime query still answers",
    "wrong_content_type": "a 200 (real Convex answers /instance_name as text/plain anyway)",
}
CELLS = [
    Cell("convex", "refuse", "fail", "nothing listens on the host", store=True),
    *(
        Cell(
            "convex_route",
            fault,
            "pass" if fault in HARMLESS_FOR_ROUTE else "fail",
            HARMLESS_FOR_ROUTE.get(fault, ""),
            paths=("/instance_name",),
        )
        for fault in HTTP_FAULTS
    ),
    *(
        Cell("convex_api", fault, "fail", "not Convex's answer", paths=("/api/",), store=True)
        for fault in HTTP_FAULTS
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def group(
    convex_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    async with contextlib.AsyncExitStack() as stack:
        targets: dict[str, SwitchServer] = {}
        for cell in CELLS:
            server = switch_server(upstream=convex_local.url)
            targets[cell.check] = await stack.enter_async_context(server)
        store = await stack.enter_async_context(switch_server(upstream=convex_local.url))
        checks = [check_config("convex", "convex", convex_local.url)]
        checks += [check_config(c.check, "convex", targets[c.check].url) for c in CELLS]
        env = daemon_env(store.url, "faults-convex", checks)
        log = tmp_path_factory.mktemp("faults-convex") / "daemon.log"
        async with running_group(env, log, targets, store=store) as running:
            yield running


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.id)
async def test_cell(group: Group, cell: Cell) -> None:
    """A healthy convex check meets the fault at runtime: it reaches the cell's state within
    thresholds x interval + timeout while the endpoints stay fast, logs one line per change,
    and passes again within one interval + timeout of the fault clearing; where the store
    API is faulted too, `services.store` turns "error" (result label counted) and back."""
    await run_cell(group, cell)


async def test_whole_life(group: Group) -> None:
    """After every cell: no background task died, no check loop crashed, /live stayed 200,
    and each check logged exactly its cell's changes."""
    await assert_whole_life(group, expected_changes(CELLS))
