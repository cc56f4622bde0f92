"""Fixtures shared by every test: dev/convex-local and the real Mastra server of dev/mastra."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import procs

SECRET = "test-secret-0123456789"


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
