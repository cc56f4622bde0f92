"""A real sidecar for the Prometheus and Grafana tests: Convex and Mastra pass, `app` fails."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.support import faults, procs
from tests.support.daemon import start_daemon


@pytest.fixture(scope="package")
def failing_app_sidecar(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.Proc]:
    """A sidecar whose `app` check points where nothing listens, so every kind of series is on
    its /metrics page (passes, failures, transitions to both, store calls); yielded once
    `app` has failed (`/health` 503)."""
    log: Path = tmp_path_factory.mktemp("sidecar") / "daemon.log"
    env = {
        "CONVEX_URL": convex_local.url,
        "MASTRA_URL": mastra_local.url,
        "HEALTH_SIDECAR_SECRET": SECRET,
        "SIDECAR_APP_URL": faults.refused_url(),
        "SIDECAR_INSTANCE": "prometheus-tests",
        "SIDECAR_INTERVAL": "1",
        "SIDECAR_TIMEOUT": "0.5",
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    daemon = start_daemon(env, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(daemon.url + "/health", timeout=2).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    break
            assert time.monotonic() < deadline, f"app never failed:\n{daemon.output()}"
            time.sleep(0.1)
        yield daemon
    finally:
        daemon.stop()
