"""Fixtures shared by every test: dev/convex-local and the real Mastra server of dev/mastra."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import procs

SECRET = "test-secret-0123456789"


@pytest.fixture(scope="session")
def convex_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """dev/convex-local on a free port, holding SECRET; shared by the session (use unique
    instance names per test)."""
    port = procs.free_port()
    log: Path = tmp_path_factory.mktemp("convex-local") / "out.log"
    with procs.running(
        procs.convex_local_argv(),
        port=port,
        ready_path="/version",
        log=log,
        env={"PORT": str(port), "HEALTH_SIDECAR_SECRET": SECRET},
    ) as proc:
        yield proc


@pytest.fixture(scope="session")
def mastra_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    """The real Mastra server of dev/mastra (one agent, "assistant") on a free port."""
    port = procs.free_port()
    with procs.running(
        procs.mastra_argv(),
        port=port,
        ready_path="/health",
        log=tmp_path_factory.mktemp("mastra") / "out.log",
        env={"PORT": str(port), "MASTRA_TELEMETRY_DISABLED": "1"},
    ) as proc:
        yield proc
