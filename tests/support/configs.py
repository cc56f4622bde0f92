"""Configurations for the settings tests: a valid base environment, the names the settings
read, and the invalid-config fixtures under tests/modules/config/invalid/.

A fixture's first line is `# expect: TEXT`, what the error must say: where the bad value came
from (the variable, or the file's name and key) and, where it matters, the problem. `*.toml`
fixtures are the file SIDECAR_CONFIG points at; `*.env` fixtures are `KEY=VALUE` lines applied
on top of the valid base environment, where `KEY=` (no value) removes KEY.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import AliasChoices

from sidecar.config import Settings
from sidecar.config_sources import CONFIG_ENV
from sidecar.limits import MAX_CHECKS
from tests.support.procs import ROOT

SECRET = "base-secret-0123456789"
BASE_ENV = {
    "CONVEX_URL": "http://127.0.0.1:3210",
    "MASTRA_URL": "http://127.0.0.1:4111",
    "HEALTH_SIDECAR_SECRET": SECRET,
}
EXAMPLE = ROOT / "config" / "sidecar.toml"
INVALID = ROOT / "tests" / "modules" / "config" / "invalid"
EXPECT = "# expect: "


def setting_names() -> set[str]:
    """Every environment name the settings read (upper case), plus SIDECAR_CONFIG and HOSTNAME."""
    names = {CONFIG_ENV, "HOSTNAME"}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
    return names


def invalid_fixtures() -> list[Path]:
    """Every invalid-config fixture, sorted."""
    return sorted(p for p in INVALID.iterdir() if p.suffix in (".env", ".toml"))


def expectation(fixture: Path) -> str:
    """The text from the fixture's first line."""
    first = fixture.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(EXPECT), f"{fixture.name}: first line must be '{EXPECT}FIELD'"
    return first.removeprefix(EXPECT).strip()


def environment(fixture: Path) -> dict[str, str]:
    """The base environment with the fixture applied."""
    env = dict(BASE_ENV)
    if fixture.suffix == ".toml":
        env["SIDECAR_CONFIG"] = str(fixture)
        return env
    for line in fixture.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{fixture.name}: {line!r} is not KEY=VALUE"
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


def largest_checks(convex_url: str, interval: float) -> str:
    """SIDECAR_CHECKS of the largest accepted configuration: with the built-in `convex` check,
    MAX_CHECKS checks, the others tcp checks of the Convex stand-in's port every `interval`."""
    target = convex_url.removeprefix("http://")  # any listener will do
    checks = [
        {"name": f"t{i:03d}", "kind": "tcp", "target": target, "interval": interval}
        for i in range(MAX_CHECKS - 1)
    ]
    return json.dumps(checks)
