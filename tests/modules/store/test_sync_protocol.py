"""dev/convex-local's WebSocket sync protocol with the official Python client of Convex (PyPI
`convex`, Rust-based, `subscribe` with iteration): a subscription gets its first result, then a
new one after another client's mutation; mutations run over the socket; errors come back as a
production deployment sends them. The stand-in serves its test-only functions
(dev/convex-local/testFunctions.ts)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from convex import ConvexClient, ConvexError

from tests.support import convex, procs
from tests.support.procs import Proc

WAIT = 10.0
REDACTED = re.compile(r"\[Request ID: [0-9a-f]{16}\] Server Error")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    log = tmp_path_factory.mktemp("convex-sync") / "out.log"
    with procs.convex_local(log, functions="test") as proc:
        yield proc


async def test_a_subscription_gets_a_new_result_after_another_clients_mutation(
    stand_in: Proc,
) -> None:
    await convex.reset_stats(stand_in.url)
    subscriber, writer = ConvexClient(stand_in.url), ConvexClient(stand_in.url)
    subscription = subscriber.subscribe("tallies:get", {"name": "py-sub"})
    try:
        assert await asyncio.wait_for(anext(subscription), WAIT) == 0
        bumped = await asyncio.to_thread(writer.mutation, "tallies:bump", {"name": "py-sub"})
        assert bumped == 1
        assert await asyncio.wait_for(anext(subscription), WAIT) == 1
    finally:
        subscription.unsubscribe()
    # The first run and one re-run, each a counted call that read the tally.
    stats = (await convex.stats(stand_in.url))["tallies:get"]
    assert stats["calls"] == 2
    assert stats["documentsRead"] == 1


async def test_mutations_over_the_socket_and_their_errors_production_style(
    stand_in: Proc,
) -> None:
    client = ConvexClient(stand_in.url)
    assert await asyncio.to_thread(client.mutation, "tallies:bump", {"name": "py-mut"}) == 1
    assert await asyncio.to_thread(client.mutation, "tallies:bump", {"name": "py-mut"}) == 2

    with pytest.raises(ConvexError) as refused:
        await asyncio.to_thread(client.mutation, "notes:refuse", {})
    assert refused.value.data == {"code": "refused", "message": "no"}
    assert REDACTED.fullmatch(str(refused.value))

    # The client raises a bare Exception for an error without data.
    with pytest.raises(Exception, match=REDACTED.pattern) as failed:
        await asyncio.to_thread(client.mutation, "notes:addThenFail", {"author": "a", "body": "b"})
    assert REDACTED.fullmatch(str(failed.value)), str(failed.value)
    assert "boom" not in str(failed.value)
    # Rolled back: the note was not kept.
    assert await asyncio.to_thread(client.query, "notes:byAuthor", {"author": "a"}) == []
