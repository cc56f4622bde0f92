"""Bad input to `python -m sidecar run` itself (not only `config`): an invalid configuration
exits 2 naming the field before anything starts, and an address it cannot listen on ends the
process cleanly, never with a Python traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.configs import INVALID, SECRET, environment, expectation
from tests.support.daemon import cli

RUN_FIXTURES = [
    "missing-secret.env",
    "port-out-of-range.env",
    "url-with-credentials.env",
    "url-password-with-a-hash.env",
    "config-file-missing.env",
    "not-toml.toml",
    "check-bad-regex.toml",
    "fast-interval-exceeds-interval.toml",
    "fast-interval-below-minimum.env",
    "duplicate-check-names.toml",
    "store-ttl-too-short.toml",
    "port-not-an-integer.toml",
    "tcp-target-with-a-scheme.toml",
    "tcp-target-url-without-port.env",
]


@pytest.mark.parametrize(
    ("name", "args"),
    [*((name, ("run",)) for name in RUN_FIXTURES), *((name, ()) for name in RUN_FIXTURES[:2])],
    ids=[*(f"run-{n}" for n in RUN_FIXTURES), *(f"no-command-{n}" for n in RUN_FIXTURES[:2])],
)
def test_run_with_invalid_config_exits_2_naming_the_field(name: str, args: tuple[str, ...]) -> None:
    """`health-sidecar run` (and the bare command, which means run) with an invalid fixture
    exits 2 at once: nothing on stdout (it never started: no log line, no listener), no
    traceback, the field named on stderr, never the secret."""
    fixture = INVALID / name
    env = environment(fixture)
    env["SIDECAR_HOST"] = "127.0.0.1"
    env["SIDECAR_PORT"] = env.get("SIDECAR_PORT", str(procs.free_port()))
    proc = cli(*args, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("health-sidecar: invalid configuration:\n"), proc.stderr
    assert expectation(fixture) in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr
    assert "Hunter2pass" not in proc.stderr
    assert "hunter2-password" not in proc.stderr


def test_run_on_a_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    """Another process listens on SIDECAR_PORT: `run` exits non-zero within seconds, says so
    in one JSON log line naming the address, with no Python traceback and no "Unclosed client
    session" noise (nothing was started that is not stopped)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "CONVEX_URL": "http://127.0.0.1:9",
            "HEALTH_SIDECAR_SECRET": SECRET,
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(port),
        }
        proc = cli("run", env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode not in (0, None), output
    assert "Traceback" not in output, output
    assert "Unclosed" not in output, output
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # every stdout line is JSON
    errors = [e for e in events if e.get("level") == "error"]
    assert errors, output
    assert any(str(port) in json.dumps(e) for e in errors), errors
