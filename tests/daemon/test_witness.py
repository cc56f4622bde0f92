"""When Convex itself is down, the peers witness (issue 17): three real daemons, each reaching
dev/convex-local through a proxy of its own that the test cuts (a real socket refusing), and
each reached by its peers through a witness proxy (its SIDECAR_ADVERTISE_URL) that the test
can cut too. Convex cut for all: nobody leaves (a shared outage, named by the peers); Convex
back: the fleet view returns and the witness hands over to it, nobody leaving meanwhile; one
instance cut off alone: only it leaves; cut off from Convex and from its peers: it leaves."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import faults, procs
from tests.support.daemon import get, metric, metrics_text, running_daemon_async, wait_for
from tests.support.procs import SECRET
from tests.support.switch import SwitchServer, switch_server

pytestmark = pytest.mark.slow

INTERVAL = 0.5
TIMEOUT = 0.3
STORE_TIMEOUT = 0.5
# A panic check that just failed stays pending one interval plus the grace (0.2 + 1 + store
# timeout): the asker's second question comes within it.
WINDOW = INTERVAL + 0.2 + 1 + STORE_TIMEOUT


@pytest.fixture(scope="module")
def witness_convex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """A Convex stand-in of this module's own (its peers' ring holds these daemons only)."""
    with procs.convex_local(tmp_path_factory.mktemp("witness-convex") / "out.log", SECRET) as proc:
        yield proc


@dataclass
class Member:
    """One sidecar, the proxy to its Convex and the proxy its peers reach it through."""

    name: str
    daemon: procs.Proc
    convex: SwitchServer
    witness: SwitchServer
    mastra: SwitchServer | None


@contextlib.asynccontextmanager
async def fleet_of(
    names: Sequence[str], convex: procs.Proc, tmp: Path, mastra: procs.Proc | None = None
) -> AsyncIterator[list[Member]]:
    """Daemons on 127.0.0.1 (their Mastra, when given, behind a proxy each), ready and knowing
    each other."""
    async with contextlib.AsyncExitStack() as stack:
        members = []
        for name in names:
            port = procs.free_port()
            to_convex = await stack.enter_async_context(switch_server(upstream=convex.url))
            witness = await stack.enter_async_context(
                switch_server(upstream=f"http://127.0.0.1:{port}")
            )
            env = {
                "CONVEX_URL": to_convex.url,
                "HEALTH_SIDECAR_SECRET": SECRET,
                "SIDECAR_INSTANCE": name,
                "SIDECAR_INTERVAL": str(INTERVAL),
                "SIDECAR_TIMEOUT": str(TIMEOUT),
                "SIDECAR_STORE_INTERVAL": "1",
                "SIDECAR_STORE_TIMEOUT": str(STORE_TIMEOUT),
                "SIDECAR_DRAIN_SECONDS": "0",
                "SIDECAR_ADVERTISE_URL": witness.url,
            }
            to_mastra = None
            if mastra is not None:
                to_mastra = await stack.enter_async_context(switch_server(upstream=mastra.url))
                env["MASTRA_URL"] = to_mastra.url
            daemon = await stack.enter_async_context(
                running_daemon_async(env, tmp / f"{name}.log", port=port)
            )
            members.append(Member(name, daemon, to_convex, witness, to_mastra))
        for member in members:
            await wait_for(member.daemon.url + "/ready", 200, within=10)
        # Every member knows the others (a hello or a sync asking for peers names them; a
        # member of an earlier test killed without its last sync may still be named too).
        for member in members:
            others = {m.name for m in members} - {member.name}
            await until(lambda m=member: peers_of(m), lambda p, o=others: o <= set(p), 10)
        yield members


async def verbose(member: Member) -> Any:
    return (await get(member.daemon.url + "/health?verbose", within=2))[1]


async def peers_of(member: Member) -> list[str]:
    return list((await verbose(member))["fleet"]["peers"])


async def until(probe: Any, done: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            assert done(value), value
            return value
        await asyncio.sleep(0.1)


async def readiness(members: Sequence[Member]) -> list[int]:
    return [(await get(m.daemon.url + "/ready", within=2))[0] for m in members]


async def watch(members: Sequence[Member], seconds: float) -> list[list[int]]:
    """/ready of every member every 50 ms for `seconds`."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(await readiness(members))
        await asyncio.sleep(0.05)
    return seen


async def test_convex_down_for_all_is_a_shared_outage_witnessed_by_the_peers(
    witness_convex: procs.Proc, tmp_path: Path
) -> None:
    async with fleet_of(["w-a", "w-b", "w-c"], witness_convex, tmp_path) as members:
        for member in members:
            await member.convex.refuse()
        seen = await watch(members, 4 * WINDOW)
        assert all(s != [503, 503, 503] for s in seen), seen
        assert all(s.count(503) <= 1 for s in seen), seen  # at most one unready at a time
        assert seen[-1] == [200, 200, 200], seen[-10:]
        doc = await verbose(members[0])
        assert doc["store"]["status"] == "error"
        assert doc["services"]["convex"] == "error"
        shared = doc["fleet"]["shared_outages"]["convex"]
        assert "witnessed by peers" in shared
        assert "w-b" in shared
        assert "w-c" in shared
        text = await metrics_text(members[0].daemon.url)
        assert metric(text, 'sidecar_shared_outage{check="convex"}') == 1.0
        # Convex back: the next sync brings the fleet view back, and the witness hands over
        # to Convex's count without a gap (its first answers still count the failures as they
        # were, and `convex` fails here until its next probe): nobody leaves meanwhile.
        for member in members:
            await member.convex.accept()
        back = asyncio.create_task(watch(members, 4 * WINDOW))
        for member in members:
            await until(
                lambda m=member: verbose(m),
                lambda d: d["store"]["status"] == "ok" and not d["fleet"]["shared_outages"],
                10,
            )
        after = await back
        assert all(s == [200, 200, 200] for s in after), [s for s in after if 503 in s]
        assert await readiness(members) == [200, 200, 200]


async def test_convex_and_mastra_down_together_nobody_leaves(
    witness_convex: procs.Proc, mastra_local: procs.Proc, tmp_path: Path
) -> None:
    async with fleet_of(["m-a", "m-b", "m-c"], witness_convex, tmp_path, mastra_local) as members:
        for member in members:
            assert member.mastra is not None
            member.mastra.inject(faults.respond(503, b'{"success":false}'))
            await member.convex.refuse()
        seen = await watch(members, 4 * WINDOW)
        assert all(s.count(503) <= 1 for s in seen), seen
        assert seen[-1] == [200, 200, 200], seen[-10:]
        shared = (await verbose(members[1]))["fleet"]["shared_outages"]
        assert sorted(shared) == ["convex", "mastra"]
        assert "witnessed by peers" in shared["mastra"]


async def test_one_instance_cut_off_alone_leaves_and_the_others_stay(
    witness_convex: procs.Proc, tmp_path: Path
) -> None:
    async with fleet_of(["l-a", "l-b", "l-c"], witness_convex, tmp_path) as members:
        await members[0].convex.refuse()
        seen = await watch(members, 3 * WINDOW)
        assert seen[-1] == [503, 200, 200], seen[-10:]
        assert all(s[1:] == [200, 200] for s in seen), seen
        doc = await verbose(members[0])
        assert doc["fleet"]["shared_outages"] == {}
        assert "convex is fail" in doc.get("reasons", []) or doc["ready"] is False


async def test_cut_off_from_convex_and_from_its_peers_it_leaves(
    witness_convex: procs.Proc, tmp_path: Path
) -> None:
    """The peers cannot be reached (their witness proxies refuse) and Convex is down for all:
    no witness answers, so each failure is a local fault, as without a fleet."""
    async with fleet_of(["p-a", "p-b", "p-c"], witness_convex, tmp_path) as members:
        for member in members:
            await member.witness.refuse()
        for member in members:
            await member.convex.refuse()
        seen = await watch(members, 3 * WINDOW)
        assert seen[-1] == [503, 503, 503], seen[-10:]
