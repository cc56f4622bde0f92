"""Shared by the configuration tests: a valid base environment and a clean process env."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import AliasChoices

from sidecar.config import CONFIG_ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET = "base-secret-0123456789"
BASE_ENV = {
    "CONVEX_URL": "http://127.0.0.1:3210",
    "MASTRA_URL": "http://127.0.0.1:4111",
    "HEALTH_SIDECAR_SECRET": SECRET,
}


def setting_names() -> set[str]:
    """Every environment name the settings read (upper case), plus SIDECAR_CONFIG and HOSTNAME."""
    names = {CONFIG_ENV, "HOSTNAME"}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
    return names


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the developer's or CI's environment leaks in (names are matched
    case-insensitively, as the settings read them)."""
    names = setting_names()
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    return monkeypatch


def run_config(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m sidecar config` in a clean environment: PATH, HOME and `env` only."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "config", *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
