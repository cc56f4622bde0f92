"""Every validation rule has a bad-input fixture under `invalid/` (blackbox_exporter's
`config/testdata/invalid-*.yml`), loaded in process (a handful also run through the real
command line, in tests/badinput/test_cli.py).

A fixture's first line is `# expect: TEXT`, the field name the error must mention. `*.toml`
fixtures are the file SIDECAR_CONFIG points at; `*.env` fixtures are `KEY=VALUE` lines applied
on top of the valid base environment, where `KEY=` (no value) removes KEY.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_settings
from tests.config.conftest import BASE_ENV, SECRET

INVALID = Path(__file__).parent / "invalid"
FIXTURES = sorted(p for p in INVALID.iterdir() if p.suffix in (".env", ".toml"))
EXPECT = "# expect: "


def expectation(fixture: Path) -> str:
    """The field name from the fixture's first line."""
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


def test_every_kind_of_fixture_is_present() -> None:
    """The fixture set covers both sources (environment and file) and is not empty by
    accident (a moved directory would otherwise pass with zero parametrized cases)."""
    assert sum(p.suffix == ".env" for p in FIXTURES) >= 15
    assert sum(p.suffix == ".toml" for p in FIXTURES) >= 25


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_invalid_config_is_refused_naming_the_field(
    fixture: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Loading the settings with the fixture applied raises ConfigError (what `config` and
    `run` turn into exit 2: tests/badinput/test_cli.py runs a handful through the command
    line): "invalid configuration:", the fixture's field named, never the secret."""
    expect = expectation(fixture)
    for key, value in environment(fixture).items():
        clean_env.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("invalid configuration:\n"), message
    assert expect in message, message
    assert SECRET not in message
