"""`health-sidecar config` (as `python -m sidecar config`, a subprocess): effective settings
as JSON, secrets masked, the resolved checks listed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.configs import BASE_ENV, SECRET
from tests.support.daemon import cli

TOKEN = "details-token-abcdefghijkl"
HEADER_TOKEN = "header-bearer-zyxwvutsrq"
MASK = "**********"


def test_config_prints_json_with_secrets_masked(tmp_path: Path) -> None:
    """With a secret, a details token and a check header carrying a token, `config` exits 0
    and prints JSON in which all three are masked; none of their values appears on stdout or
    stderr; the checks are the resolved ones (built-ins, file checks, defaults filled in)."""
    config = tmp_path / "sidecar.toml"
    config.write_text(
        "interval = 5\n"
        "[[checks]]\n"
        'name = "payments"\nkind = "http"\ntarget = "https://payments.example.com/healthz"\n'
        f'headers = {{ Authorization = "Bearer {HEADER_TOKEN}" }}\n',
        encoding="utf-8",
    )
    env = {
        **BASE_ENV,
        "SIDECAR_DETAILS_TOKEN": TOKEN,
        "SIDECAR_CONFIG": str(config),
        "SIDECAR_APP_URL": "http://127.0.0.1:3000/api/health",
        "HOSTNAME": "web-1",
    }
    proc = cli("config", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    for secret in (SECRET, TOKEN, HEADER_TOKEN):
        assert secret not in proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["secret"] == MASK
    assert doc["details_token"] == MASK
    assert (doc["instance"], doc["port"], doc["interval"]) == ("web-1", 8099, 5.0)
    checks = {c["name"]: c for c in doc["checks"]}
    assert [(name, c["kind"]) for name, c in checks.items()] == [
        ("convex", "convex"),
        ("mastra", "mastra"),
        ("app", "http"),
        ("payments", "http"),
    ]
    assert all((c["interval"], c["timeout"]) == (5.0, 2.0) for c in checks.values())
    assert checks["payments"]["headers"] == {"Authorization": MASK}
    assert checks["convex"]["target"] == BASE_ENV["CONVEX_URL"]


def test_config_without_details_token_prints_null() -> None:
    """With the seed's minimal environment `config` prints `details_token: null` (unset, not
    masked) and exactly the two seed checks."""
    proc = cli("config", env=BASE_ENV)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["details_token"] is None
    assert [c["name"] for c in doc["checks"]] == ["convex", "mastra"]
    assert SECRET not in proc.stdout
