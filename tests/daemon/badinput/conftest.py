"""A real daemon (`python -m sidecar run`, a subprocess) for a whole module of bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import procs
from tests.support.abuse import Daemon, daemon_env
from tests.support.daemon import start_daemon


@pytest.fixture(scope="module")
def daemon(
    convex_local: procs.Proc,
    mastra_local: procs.Proc,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Daemon]:
    """One ready daemon on 127.0.0.1 for the module; stopped (by its PID) at the end."""
    instance = f"badinput-{request.module.__name__.rsplit('.', 1)[-1]}"
    log = tmp_path_factory.mktemp("badinput") / "daemon.log"
    proc = start_daemon(daemon_env(convex_local, mastra_local, instance), log, wait="ready")
    running = Daemon(proc=proc, host="127.0.0.1", port=proc.port)
    try:
        running.new_log_lines()  # start-up lines are not the abuse's
        yield running
    finally:
        proc.stop()
