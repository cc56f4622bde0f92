"""A real sidecar for the Prometheus and Grafana tests: Convex and Mastra pass, `app` fails, and
it holds the lease of a shared check."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import faults, procs
from tests.support.daemon import start_daemon
from tests.support.procs import SECRET
from tests.support.prometheus import SHARED_CHECK


@pytest.fixture(scope="package")
def failing_app_sidecar(
    convex_local: procs.Proc, mastra_local: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.Proc]:
    """A sidecar whose `app` check points where nothing listens, so every kind of series is on
    its /metrics page (passes, failures, transitions to both, store calls), with a shared
    check (Mastra's agent list) besides the seed's; yielded once `app` has failed (`/health`
    503) and the sidecar holds the shared check's lease."""
    shared = {
        "name": SHARED_CHECK,
        "kind": "http",
        "target": f"{mastra_local.url}/api/agents",
        "shared": True,
    }
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
        "SIDECAR_CHECKS": json.dumps([shared]),
    }
    daemon = start_daemon(env, log)
    try:
        deadline = time.monotonic() + 15
        holder = f'sidecar_check_holder{{check="{SHARED_CHECK}"}} 1.0'
        while True:
            try:
                urllib.request.urlopen(daemon.url + "/health", timeout=2).close()
            except urllib.error.HTTPError as exc:
                if exc.code == 503:
                    with urllib.request.urlopen(daemon.url + "/metrics", timeout=2) as resp:
                        if holder in resp.read().decode().splitlines():
                            break
            assert time.monotonic() < deadline, f"app never failed, or no lease:\n{daemon.output()}"
            time.sleep(0.1)
        yield daemon
    finally:
        daemon.stop()
