"""Where the settings come from besides the defaults: the environment, and the TOML file
that SIDECAR_CONFIG names (an explicitly given path that does not exist is an error)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource

from sidecar.config_errors import ConfigError, field_names, heading

CONFIG_ENV = "SIDECAR_CONFIG"


class EnvSource(EnvSettingsSource):
    """The environment, with a complex value (SIDECAR_CHECKS) that is not JSON reported as
    such: `SIDECAR_CHECKS (checks): is not valid JSON (...)`."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """The value decoded from JSON, or `ConfigError` naming the field."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            head = heading(field_name, field_names(self.settings_cls))
            raise ConfigError([f"{head}: is not valid JSON ({exc})"]) from None


class TomlSource(PydanticBaseSettingsSource):
    """Reads `SIDECAR_CONFIG` (a TOML file, at `path`) and hands its keys to the fields' first
    alias, so the file says `port = 8099` while the environment says `SIDECAR_PORT`."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        # Looked up case-insensitively, like every other setting.
        path = next((v for k, v in os.environ.items() if k.upper() == CONFIG_ENV), None)
        self.path = path or None
        self._data = _read_toml(path)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` maps the whole file at once."""
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        env_names = {
            str(choice): name
            for name, field in fields.items()
            if isinstance(field.validation_alias, AliasChoices)
            for choice in field.validation_alias.choices
        }
        out: dict[str, Any] = {}
        for key, value in self._data.items():
            field = fields.get(key)
            alias = field.validation_alias if field is not None else None
            if key == "config_file" or key in env_names:
                name = env_names.get(key, key)
                hint = "" if name == "config_file" else f"; the file spells it {name!r}"
                raise ConfigError([f"{self.path}: {key}: cannot be set in the file{hint}"])
            if isinstance(alias, AliasChoices):
                out[str(alias.choices[0])] = value
            else:
                out[key] = value  # unknown key: extra="forbid" names it
        return out


def _read_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError([f"{CONFIG_ENV}: {path} does not exist or is not a file"])
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"{CONFIG_ENV}: {path} is not valid TOML: {exc}"]) from None
