"""Settings: environment over an optional TOML file over defaults, validated in one place."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.checks import Check, ConvexCheck, HttpCheck, MastraCheck, http_url

CONFIG_ENV = "SIDECAR_CONFIG"


class ConfigError(Exception):
    """The configuration is invalid; the message names each field and its problem."""


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _default_instance() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname() or "sidecar"


class Settings(BaseSettings):
    """Every option of the daemon. Environment names are in `validation_alias`; the TOML file
    uses the field names (`port`, `interval`, `[[checks]]`...)."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, case_sensitive=False, validate_by_name=False
    )

    convex_url: str = Field(validation_alias=_env("CONVEX_URL", "NEXT_PUBLIC_CONVEX_URL"))
    mastra_url: str | None = Field(
        None, validation_alias=_env("MASTRA_URL", "NEXT_PUBLIC_MASTRA_URL")
    )
    secret: SecretStr = Field(validation_alias=_env("HEALTH_SIDECAR_SECRET"))
    app_url: str | None = Field(None, validation_alias=_env("SIDECAR_APP_URL"))
    host: str = Field("0.0.0.0", min_length=1, validation_alias=_env("SIDECAR_HOST"))
    port: int = Field(8099, ge=1, le=65535, validation_alias=_env("SIDECAR_PORT"))
    instance: str = Field(
        default_factory=_default_instance,
        min_length=1,
        max_length=200,
        validation_alias=_env("SIDECAR_INSTANCE"),
    )
    config_file: Path | None = Field(None, validation_alias=_env(CONFIG_ENV))
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", validation_alias=_env("SIDECAR_LOG_LEVEL")
    )
    details_token: SecretStr | None = Field(None, validation_alias=_env("SIDECAR_DETAILS_TOKEN"))
    drain_seconds: float = Field(
        15.0, ge=0, le=3600, validation_alias=_env("SIDECAR_DRAIN_SECONDS")
    )
    interval: float = Field(10.0, ge=0.01, le=86400, validation_alias=_env("SIDECAR_INTERVAL"))
    timeout: float = Field(2.0, gt=0, le=600, validation_alias=_env("SIDECAR_TIMEOUT"))
    store_ttl: float = Field(300.0, ge=1, le=604800, validation_alias=_env("SIDECAR_STORE_TTL"))
    store_timeout: float = Field(2.0, gt=0, le=60, validation_alias=_env("SIDECAR_STORE_TIMEOUT"))
    checks: tuple[Check, ...] = Field((), validation_alias=_env("SIDECAR_CHECKS"))

    @field_validator("convex_url", "mastra_url", "app_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return http_url(value) if value else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("secret", "details_token")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.timeout > self.interval:
            raise ValueError(
                f"SIDECAR_TIMEOUT ({self.timeout:g}s) exceeds SIDECAR_INTERVAL ({self.interval:g}s)"
            )
        names = [c.name for c in self.checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"checks: duplicate check names {dupes}")
        longest = max((c.interval or self.interval for c in self.resolved_checks()), default=0)
        if self.store_ttl < 2 * longest:
            raise ValueError(
                f"SIDECAR_STORE_TTL ({self.store_ttl:g}s) must be at least twice the longest "
                f"check interval ({longest:g}s)"
            )
        return self

    def resolved_checks(self) -> tuple[Check, ...]:
        """The checks to run: the built-ins, then the file's; a file check with a built-in's
        name replaces it. Interval and timeout defaults are filled in."""
        builtin: list[Check] = [ConvexCheck(name="convex", target=self.convex_url)]
        if self.mastra_url:
            builtin.append(MastraCheck(name="mastra", target=self.mastra_url))
        if self.app_url:
            builtin.append(HttpCheck(name="app", target=self.app_url))
        own = {c.name for c in self.checks}
        chosen = [c for c in builtin if c.name not in own] + list(self.checks)
        return tuple(self._fill(c) for c in chosen)

    def _fill(self, check: Check) -> Check:
        interval = check.interval if check.interval is not None else self.interval
        timeout = check.timeout if check.timeout is not None else min(self.timeout, interval)
        return check.model_copy(update={"interval": interval, "timeout": timeout})

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments, then the environment, then the TOML file."""
        return init_settings, env_settings, TomlSource(settings_cls)


class TomlSource(PydanticBaseSettingsSource):
    """Reads `SIDECAR_CONFIG` (a TOML file) and hands its keys to the fields' first alias, so
    the file says `port = 8099` while the environment says `SIDECAR_PORT`."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self._data = _read_toml(os.environ.get(CONFIG_ENV))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """Unused: `__call__` maps the whole file at once."""
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        out: dict[str, Any] = {}
        for key, value in self._data.items():
            field = fields.get(key)
            alias = field.validation_alias if field is not None else None
            if isinstance(alias, AliasChoices) and key != "config_file":
                out[str(alias.choices[0])] = value
            else:
                out[key] = value  # unknown key: extra="forbid" names it
        return out


def _read_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{CONFIG_ENV}: {path} does not exist or is not a file")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{CONFIG_ENV}: {path} is not valid TOML: {exc}") from None


def load_settings() -> Settings:
    """Build the settings from the environment and file, or raise `ConfigError` naming every
    invalid field."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line per problem: `FIELD: problem`, naming the environment variable where one exists."""
    names: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else []
        for choice in [name, *choices]:
            names[str(choice).lower()] = f"{choices[0]} ({name})" if choices else name
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        head = names.get(loc[0].lower(), loc[0]) if loc else "settings"
        where = ".".join([head, *loc[1:]])
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if loc else message)
    return "invalid configuration:\n" + "\n".join(f"  {line}" for line in lines)
