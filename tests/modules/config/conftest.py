"""The settings tests' fixture: a process environment without any setting in it."""

from __future__ import annotations

import os

import pytest

from tests.support.configs import setting_names


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting from the developer's or CI's environment leaks in (names are matched
    case-insensitively, as the settings read them)."""
    names = setting_names()
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key)
    return monkeypatch
