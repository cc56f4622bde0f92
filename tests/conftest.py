"""Fixtures shared by every test (dev/convex-local and the real Mastra server of dev/mastra), and
the markers that follow from where a test lives (tests/README.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.procs import SECRET


@pytest.fixture(scope="session")
def convex_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """dev/convex-local on a free port, holding SECRET; shared by the session (use unique
    instance names per test)."""
    with procs.convex_local(tmp_path_factory.mktemp("convex-local") / "out.log", SECRET) as proc:
        yield proc


@pytest.fixture(scope="session")
def mastra_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """The real Mastra server of dev/mastra (one agent, "assistant") on a free port."""
    with procs.mastra(tmp_path_factory.mktemp("mastra") / "out.log") as proc:
        yield proc


LEVEL_MARKERS = {"daemon": "daemon", "clients": "external"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test under tests/daemon/ is marked `daemon`, one under tests/clients/ `external`."""
    here = Path(__file__).parent
    for item in items:
        level = item.path.relative_to(here).parts[0]
        if level in LEVEL_MARKERS:
            item.add_marker(LEVEL_MARKERS[level])
