"""The benchmarks' set-up (bench/common.py) brings the daemon to a passing /ready.

Benchmarks are run by hand, not by `make test`: this is what notices a change that would
leave one waiting for a /ready that never comes (as a dependency stand-in that did not speak
the store's protocol once did).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import daemon, daemon_env, fetch, stand_ins
from bench.idle import ten_checks


def test_the_benchmarks_stand_ins_bring_every_check_to_pass(tmp_path: Path) -> None:
    """bench/idle.py's ten checks against the stand-ins: /ready 200, every check passing."""
    with stand_ins(tmp_path) as peers:
        dep = peers.dep.url
        env = daemon_env(peers.convex.url, dep, SIDECAR_CHECKS=ten_checks(dep))
        with daemon(env, tmp_path / "daemon.log", wait="ready") as proc:
            status, body = fetch(proc.url + "/health?verbose")
    assert status == 200, body
    checks = json.loads(body)["checks"]
    assert len(checks) == 10, checks
    assert {name: c["status"] for name, c in checks.items()} == dict.fromkeys(checks, "pass")
