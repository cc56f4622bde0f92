"""Every validation rule has a bad-input fixture under `invalid/` (blackbox_exporter's
`config/testdata/invalid-*.yml`; their format: tests/support/configs.py), loaded in process (a
handful also run through the real command line, in tests/daemon/badinput/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_settings
from sidecar.config_errors import ConfigError
from tests.support.configs import SECRET, environment, expectation, invalid_fixtures

FIXTURES = invalid_fixtures()


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
    `run` turn into exit 2: tests/daemon/badinput/test_cli.py runs a handful through the command
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
