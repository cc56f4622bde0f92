"""A real daemon (`python -m sidecar run`, a subprocess) for a whole module of bad input."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support import procs
from tests.support.abuse import Daemon, daemon_env, wait_ready
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
    proc = start_daemon(daemon_env(convex_local, mastra_local, instance), log)
    url = urlsplit(proc.url)
    assert url.hostname is not None
    assert url.port is not None
    running = Daemon(proc=proc, host=url.hostname, port=url.port)
    try:
        wait_ready(running.host, running.port)
        running.new_log_lines()  # start-up lines are not the abuse's
        yield running
    finally:
        proc.stop()
