"""Settings: environment over an optional TOML file over defaults, validated in one place."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from sidecar.checks import (
    APP_CHECK,
    DEFAULT_FAST_INTERVAL,
    DEFAULT_INTERVAL,
    DEFAULT_TIMEOUT,
    MASK,
    MAX_PROBES_PER_SECOND,
    MIN_FAST_INTERVAL,
    Check,
    ConvexCheck,
    HttpCheck,
    MastraCheck,
    default_panic,
    http_url,
)
from sidecar.config_errors import (
    CROSS_FIELD,
    ConfigError,
    FieldNames,
    describe,
    errors,
    field_names,
    labelled,
    problem,
)
from sidecar.config_sources import CONFIG_ENV, EnvSource, TomlSource
from sidecar.limits import MAX_CHECKS, MAX_PERIOD_MS, MIN_TTL_MS, TTL_CLAMP_MS
from sidecar.peers import MAX_PEER_URL, Network, parse_networks, peer_url

MIN_STORE_TTL = MIN_TTL_MS / 1000
# The deployment keeps an instance's documents at most TTL_CLAMP_MS after its last sync and
# counts it live for at most two periods of MAX_PERIOD_MS: longer settings would not hold.
MAX_STORE_TTL = TTL_CLAMP_MS / 1000
MAX_STORE_INTERVAL = MAX_PERIOD_MS / 1000
RESERVED_NAMES = {"store": "/health reports the Convex store's status as services.store"}


def _clear_text(url: str) -> bool:
    """True for an http:// URL whose host is not this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _default_instance() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname() or "sidecar"


class Settings(BaseSettings):
    """Every option of the daemon. Environment names are in `validation_alias`; the TOML file
    uses the field names (`port`, `interval`, `[[checks]]`...)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        case_sensitive=False,
        validate_by_name=False,
        env_ignore_empty=True,  # `SIDECAR_PORT=` (compose's empty default) means unset
    )

    convex_url: str = Field(validation_alias=_env("CONVEX_URL", "NEXT_PUBLIC_CONVEX_URL"))
    mastra_url: str | None = Field(
        None, validation_alias=_env("MASTRA_URL", "NEXT_PUBLIC_MASTRA_URL")
    )
    secret: SecretStr = Field(validation_alias=_env("HEALTH_SIDECAR_SECRET"))
    app_url: str | None = Field(None, validation_alias=_env("SIDECAR_APP_URL"))
    host: str = Field("0.0.0.0", min_length=1, validation_alias=_env("SIDECAR_HOST"))
    port: int = Field(8099, ge=1, le=65535, validation_alias=_env("SIDECAR_PORT"))
    # Where the other instances reach this sidecar (its witness endpoint); see `advertise`.
    advertise_url: str | None = Field(
        None, max_length=MAX_PEER_URL, validation_alias=_env("SIDECAR_ADVERTISE_URL")
    )
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
    # A comma-separated list in the environment (NoDecode: not JSON).
    trusted_proxies: Annotated[tuple[Network, ...], NoDecode] = Field(
        (), validation_alias=_env("SIDECAR_TRUSTED_PROXIES")
    )
    drain_seconds: float = Field(
        15.0, ge=0, le=3600, validation_alias=_env("SIDECAR_DRAIN_SECONDS")
    )
    interval: float = Field(
        DEFAULT_INTERVAL, ge=0.01, le=86400, validation_alias=_env("SIDECAR_INTERVAL")
    )
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=600, validation_alias=_env("SIDECAR_TIMEOUT"))
    fast_interval: float = Field(
        DEFAULT_FAST_INTERVAL,
        ge=MIN_FAST_INTERVAL,
        le=86400,
        validation_alias=_env("SIDECAR_FAST_INTERVAL"),
    )
    store_interval: float = Field(
        60.0, ge=1, le=MAX_STORE_INTERVAL, validation_alias=_env("SIDECAR_STORE_INTERVAL")
    )
    store_ttl: float | None = Field(
        None, ge=MIN_STORE_TTL, le=MAX_STORE_TTL, validation_alias=_env("SIDECAR_STORE_TTL")
    )
    store_timeout: float = Field(2.0, gt=0, le=60, validation_alias=_env("SIDECAR_STORE_TIMEOUT"))
    convex_allow_http: bool = Field(False, validation_alias=_env("SIDECAR_CONVEX_ALLOW_HTTP"))
    panic_threshold: float = Field(
        0.5, gt=0, le=1, validation_alias=_env("SIDECAR_PANIC_THRESHOLD")
    )
    # The file's (or SIDECAR_CHECKS') checks as given; `resolved_checks` are the ones to run.
    checks: tuple[Check, ...] = Field((), validation_alias=_env("SIDECAR_CHECKS"))
    _resolved: tuple[Check, ...] = PrivateAttr(())

    @field_validator("convex_url", "mastra_url", "app_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return http_url(value) if value else None

    @field_validator("advertise_url")
    @classmethod
    def _advertise_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        url = http_url(value)
        if not peer_url(url):
            raise ValueError("must not have a ?query, spaces or characters outside ASCII")
        return url

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        return parse_networks(value) if isinstance(value, str | list | tuple) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("instance")
    @classmethod
    def _instance_fits_convex(cls, value: str) -> str:
        # Convex measures strings in UTF-16 code units and refuses names over 200 of them.
        if len(value.encode("utf-16-le")) > 400:
            raise ValueError("must be at most 200 UTF-16 code units (Convex's limit)")
        return value

    @field_validator("secret", "details_token")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        try:
            value.get_secret_value().encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 text") from None
        return value

    @field_validator("checks", mode="wrap")
    @classmethod
    def _label_check_errors(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Tag each check's errors with the check's name and kind, for `describe`."""
        try:
            return handler(value)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                exc.title, [labelled(error, value) for error in exc.errors(include_url=False)]
            ) from None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        """Resolve the checks, then judge what no single field can: every problem at once."""
        self._resolved = _resolve(self)
        problems = [
            *self._timing_problems(),
            *self._check_problems(),
            *self._store_problems(),
            *self._load_problems(),
        ]
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def _timing_problems(self) -> Iterator[InitErrorDetails]:
        if self.timeout > self.interval:
            yield problem(
                ("SIDECAR_TIMEOUT",),
                f"{self.timeout:g}s exceeds SIDECAR_INTERVAL ({self.interval:g}s)",
            )
        if "fast_interval" in self.model_fields_set and self.fast_interval > self.interval:
            yield problem(
                ("SIDECAR_FAST_INTERVAL",),
                f"{self.fast_interval:g}s exceeds SIDECAR_INTERVAL ({self.interval:g}s)",
            )

    def _check_problems(self) -> Iterator[InitErrorDetails]:
        """Names reserved or used twice, an app check shared or excused, and a timeout over
        SIDECAR_INTERVAL for a check that runs at that interval."""
        first: dict[str, int] = {}
        for index, check in enumerate(self.checks):
            loc = ("checks", index, "name")
            label = f"{check.name}, {check.kind}"
            if check.name in RESERVED_NAMES:
                why = RESERVED_NAMES[check.name]
                yield problem(loc, f"{check.name!r} is reserved: {why}", label)
            elif check.name in first:
                where = f"checks[{first[check.name]}]"
                yield problem(loc, f"duplicate check name (also {where})", label)
            first.setdefault(check.name, index)
            if check.name == APP_CHECK:
                for option in ("shared", "panic"):
                    if getattr(check, option):
                        why = "the app check (the container beside) is never shared or excused"
                        yield problem(("checks", index, option), why, label)
            given = check.model_fields_set
            if "interval" not in given and "timeout" in given and check.timeout > self.interval:
                message = (
                    f"{check.timeout:g}s exceeds the check's interval "
                    f"(SIDECAR_INTERVAL, {self.interval:g}s)"
                )
                yield problem(("checks", index, "timeout"), message, label)
            if (
                "interval" not in given
                and "fast_interval" in given
                and check.fast_interval > self.interval
            ):
                message = (
                    f"{check.fast_interval:g}s exceeds the check's interval "
                    f"(SIDECAR_INTERVAL, {self.interval:g}s)"
                )
                yield problem(("checks", index, "fast_interval"), message, label)

    def _store_problems(self) -> Iterator[InitErrorDetails]:
        shortest_ttl = 2 * self.store_interval + self.store_timeout
        if self.ttl < shortest_ttl:
            yield problem(
                ("SIDECAR_STORE_TTL",),
                f"{self.ttl:g}s must be at least twice SIDECAR_STORE_INTERVAL plus "
                f"SIDECAR_STORE_TIMEOUT ({shortest_ttl:g}s): an instance that misses one "
                "sync must not drop out of the fleet",
            )
        if _clear_text(self.convex_url) and not self.convex_allow_http:
            yield problem(
                ("CONVEX_URL",),
                "http:// to a host other than this one sends the store's calls in clear "
                "text: use https://, or set SIDECAR_CONVEX_ALLOW_HTTP=1",
            )

    def _load_problems(self) -> Iterator[InitErrorDetails]:
        """More checks, or more probes a second, than the daemon is built for. The rate is the
        worst case: every check in transition at once, run at its fast interval."""
        resolved = self._resolved
        if len(resolved) > MAX_CHECKS:
            message = f"{len(resolved)} checks; at most {MAX_CHECKS} are allowed"
            yield problem(("SIDECAR_CHECKS",), message)
        rate = sum(1 / c.fast_interval for c in resolved)
        if rate > MAX_PROBES_PER_SECOND:
            message = (
                f"the checks could run {rate:,.1f} probes a second; at most "
                f"{MAX_PROBES_PER_SECOND:,} (sum of 1/fast_interval, the pace of a check in "
                "transition): give them longer intervals or fast intervals"
            )
            yield problem(("SIDECAR_CHECKS",), message)

    @property
    def ttl(self) -> float:
        """Seconds an instance's documents stay in Convex after its last sync: by default five
        store periods (at least two plus the store timeout, and 10 s), at most 15 minutes."""
        if self.store_ttl is not None:
            return self.store_ttl
        shortest = max(2 * self.store_interval + self.store_timeout, MIN_STORE_TTL)
        return min(max(5 * self.store_interval, shortest), MAX_STORE_TTL)

    @property
    def advertise(self) -> str:
        """Where peers reach this sidecar: SIDECAR_ADVERTISE_URL, else `http://` SIDECAR_HOST
        (the container's hostname when it binds every address, 0.0.0.0 or ::) `:` SIDECAR_PORT.
        The default is wrong when peers cannot reach that name or address: SIDECAR_HOST=
        127.0.0.1 with peers on other hosts, `network_mode: service:app` in Compose (the
        hostname is the app's container), or a port published under another number."""
        if self.advertise_url:
            return self.advertise_url
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # a wildcard bind: the name of this host
            host = socket.gethostname() or "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def resolved_checks(self) -> tuple[Check, ...]:
        """The checks to run, resolved once when the settings were validated: the built-ins,
        then the file's (a file check with a built-in's name replaces it), each with its
        interval and timeout filled in from SIDECAR_INTERVAL and SIDECAR_TIMEOUT."""
        return self._resolved

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
        return init_settings, EnvSource(settings_cls), TomlSource(settings_cls)


def _resolve(settings: Settings) -> tuple[Check, ...]:
    """The built-in checks the URLs ask for, then the file's; a file check with a built-in's
    name replaces it. Interval, fast interval and timeout the check does not set come from the
    settings (each at most the interval), and `panic` from `default_panic`."""
    builtin: list[Check] = [ConvexCheck(name="convex", target=settings.convex_url)]
    if settings.mastra_url:
        builtin.append(MastraCheck(name="mastra", target=settings.mastra_url))
    if settings.app_url:
        builtin.append(HttpCheck(name="app", target=settings.app_url))
    own = {c.name for c in settings.checks}
    chosen = [c for c in builtin if c.name not in own] + list(settings.checks)
    out = []
    for check in chosen:
        given = check.model_fields_set
        interval = check.interval if "interval" in given else settings.interval
        timeout = check.timeout if "timeout" in given else min(settings.timeout, interval)
        fast = check.fast_interval if "fast_interval" in given else settings.fast_interval
        panic = check.panic if "panic" in given else default_panic(check)
        update = {
            "interval": interval,
            "fast_interval": min(fast, interval),
            "timeout": timeout,
            "panic": panic,
        }
        out.append(check.model_copy(update=update))
    return tuple(out)


def load_settings() -> Settings:
    """Build the settings from the environment and file, or raise `ConfigError` naming every
    invalid field where its value came from. Every value in the file must be valid, even one
    the environment overrides."""
    fields = field_names(Settings)
    file = TomlSource(Settings)
    in_file = file()
    from_env = {fields.get(key.lower(), (key, ()))[0] for key in EnvSource(Settings)()}
    files = {fields.get(key.lower(), (key, ()))[0]: str(file.path) for key in in_file}
    lines = _file_problems(in_file, fields, files)
    try:
        settings = Settings()
    except ValidationError as exc:
        taken = {name: path for name, path in files.items() if name not in from_env}
        lines += describe(errors(exc), fields, taken, from_env)
        raise ConfigError(list(dict.fromkeys(lines))) from None
    if lines:
        raise ConfigError(lines)
    return settings


def _file_problems(in_file: dict[str, Any], fields: FieldNames, files: dict[str, str]) -> list[str]:
    """The file's invalid values, judged as if the environment did not override them (the
    settings the file does not set come from the environment as usual). Problems across
    settings are left to the settings in effect; unknown keys too (never init options)."""
    known = {key: value for key, value in in_file.items() if key.lower() in fields}
    own = {(key,) for key in known}
    try:
        Settings(**known)
    except ValidationError as exc:
        return describe(
            (e for e in errors(exc) if e["type"] != CROSS_FIELD and e["loc"][:1] in own),
            fields,
            files,
        )
    return []


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as `health-sidecar config` prints them: JSON, every value the one in
    effect (the TTL derived when not set, the resolved checks; null only for what is unset),
    and every secret masked (secrets, the values of URL queries and check headers)."""
    doc = settings.model_dump(mode="json", exclude={"checks"})
    doc["store_ttl"] = settings.ttl
    doc["advertise_url"] = settings.advertise
    for key in ("secret", "details_token"):
        if doc[key] is not None:
            doc[key] = MASK
    doc["checks"] = [c.model_dump(mode="json") for c in settings.resolved_checks]
    for holder, key in [(doc, "convex_url"), (doc, "mastra_url"), (doc, "app_url")] + [
        (check, "target") for check in doc["checks"]
    ]:
        if isinstance(holder.get(key), str):
            holder[key] = _mask_query(holder[key])
    return doc


def _mask_query(url: str) -> str:
    """A URL with its query values masked: tokens sometimes travel there."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    masked = urlencode([(k, MASK) for k, _ in parse_qsl(parts.query, True)], safe="*")
    return parts._replace(query=masked).geturl()
