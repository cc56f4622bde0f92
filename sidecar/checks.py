"""Check definitions: one model per kind, validated, with defaults resolved from the settings."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import regex
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# The most probe runs a second the checks may add up to (sum of 1 / interval): at that rate
# the daemon spends about half a core and /live still answers in milliseconds
# (docs/benchmarks.md). The most checks is the store's own bound (Convex keeps one row per check).
MAX_PROBES_PER_SECOND = 1000
HTTP_METHODS = Literal["GET", "HEAD", "POST", "PUT", "OPTIONS"]
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
MASK = "**********"  # every secret `health-sidecar config` prints (as SecretStr does)
# Options that schedule or judge a check's results but do not change what it probes.
_NOT_PROBED = frozenset(
    {
        "name",
        "interval",
        "fast_interval",
        "timeout",
        "jitter",
        "critical",
        "failures_before_fail",
        "successes_before_pass",
        "shared",
        "panic",
    }
)
# The check of the container beside: never shared, never excused by a shared outage.
APP_CHECK = "app"
# SIDECAR_INTERVAL's and SIDECAR_TIMEOUT's defaults, in seconds.
DEFAULT_INTERVAL = 10.0
DEFAULT_TIMEOUT = 2.0
# SIDECAR_FAST_INTERVAL's default and bounds, in seconds: a check in transition (its last
# result differs from its status) runs again this soon, at most its interval.
DEFAULT_FAST_INTERVAL = 1.0
MIN_FAST_INTERVAL = 0.1
PANIC_KINDS = frozenset({"convex", "mastra"})
_NULLABLE = frozenset({"interval", "fast_interval", "timeout", "panic"})


def http_url(value: str) -> str:
    """Accept an absolute http(s) URL with a host; return it without a trailing slash.

    No message quotes the URL or a part of it: a password may be anywhere in a mistyped one
    (`https://user:pa#ss@host` parses as host `user` with port `pa`), hence no @ at all."""
    parts = urlsplit(value)
    if "@" in value:
        raise ValueError(
            "must not contain @: no credentials in URLs (send them in a header); "
            "write a literal @ as %40"
        )
    if parts.fragment or "#" in value:
        raise ValueError("must not have a #fragment")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    return value.rstrip("/")


class _Check(BaseModel):
    """What every check has; `interval`, `fast_interval` and `timeout` fall back to
    SIDECAR_INTERVAL, SIDECAR_FAST_INTERVAL and SIDECAR_TIMEOUT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    target: str
    # Unset, SIDECAR_INTERVAL and SIDECAR_TIMEOUT (at most the interval) take their place,
    # and `panic` is `default_panic()`: the settings resolve each check once (what its
    # `model_fields_set` lacks), so every check the daemon runs carries its own values.
    interval: float = Field(default=DEFAULT_INTERVAL, ge=0.01, le=86400)
    # How soon a check in transition runs again (HAProxy's `fastinter`): unset, the smaller
    # of SIDECAR_FAST_INTERVAL and the interval.
    fast_interval: float = Field(default=DEFAULT_FAST_INTERVAL, ge=MIN_FAST_INTERVAL, le=86400)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=600)
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    critical: bool = True
    failures_before_fail: int = Field(default=2, ge=1, le=100)
    successes_before_pass: int = Field(default=1, ge=1, le=100)
    # One instance of the fleet probes it and the others take its result from Convex.
    shared: bool = False
    # A failure shared by at least SIDECAR_PANIC_THRESHOLD of the live instances keeps this
    # instance ready (a shared outage drains nobody).
    panic: bool = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, data: Any) -> Any:
        """`"interval": null` (JSON) means what leaving the key out means."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (v is None and k in _NULLABLE)}
        return data

    @model_validator(mode="after")
    def _timeout_fits_interval(self) -> _Check:
        # A check without an interval of its own runs every SIDECAR_INTERVAL: the settings
        # judge that one (its message names SIDECAR_INTERVAL).
        given = {"interval", "timeout"} <= self.model_fields_set
        if given and self.timeout > self.interval:
            raise ValueError(f"timeout ({self.timeout:g}s) exceeds interval ({self.interval:g}s)")
        fast = {"interval", "fast_interval"} <= self.model_fields_set
        if fast and self.fast_interval > self.interval:
            raise ValueError(
                f"fast_interval ({self.fast_interval:g}s) exceeds interval ({self.interval:g}s)"
            )
        return self

    def definition(self) -> dict[str, Any]:
        """What the check probes (kind, target and the options that change the probe), with
        header values as they are: a restored result counts only for the same definition."""
        return {
            name: getattr(self, name) for name in type(self).model_fields if name not in _NOT_PROBED
        }


class _UrlCheck(_Check):
    @field_validator("target")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value)


class _WithHeaders(_UrlCheck):
    """Extra request headers (a token, basic auth): validated, and masked in every dump."""

    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} contains a line break or NUL")
        return value

    @field_serializer("headers")
    def _mask_headers(self, value: dict[str, str]) -> dict[str, str]:
        """Header values often carry tokens: dumps (`health-sidecar config`) show names only."""
        return dict.fromkeys(value, MASK)


class ConvexCheck(_UrlCheck):
    """The deployment answers its public HTTP route, and its function runtime answers: proven
    by the store's own calls for the store's deployment, by a `health:ping` query otherwise."""

    kind: Literal["convex"] = "convex"


class MastraCheck(_WithHeaders):
    """`GET {target}/health`, and `GET {target}/api/agents` when agents are expected, with
    `headers` (a Mastra with auth answers /api/agents 401 without them)."""

    kind: Literal["mastra"] = "mastra"
    expect_agents: tuple[str, ...] = ()


class HttpCheck(_WithHeaders):
    """Any URL: method, expected statuses (default: any 2xx), optional body regex."""

    kind: Literal["http"] = "http"
    method: HTTP_METHODS = "GET"
    expect_status: tuple[Annotated[int, Field(ge=100, le=599)], ...] = ()
    body_regex: str | None = None

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                regex.compile(value)
            except regex.error as exc:
                raise ValueError(f"is not a valid regular expression: {exc}") from None
        return value


class TcpCheck(_Check):
    """Connect to `host:port`."""

    kind: Literal["tcp"] = "tcp"

    @field_validator("target")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if "://" in value:
            raise ValueError(f"must be host:port, without a scheme: {_host_port_of(value)}")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port with a port from 1 to 65535")
        return value

    @property
    def host(self) -> str:
        """The host part, without IPv6 brackets."""
        return self.target.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part."""
        return int(self.target.rpartition(":")[2])


def _host_port_of(url: str) -> str:
    """The `host:port` a URL given as a tcp target meant, as an example for the message (never
    its credentials); `host:port` itself when the URL has no port."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        return "e.g. db:5432"
    return f"e.g. [{host}]:{port}" if ":" in host else f"e.g. {host}:{port}"


Check = Annotated[
    ConvexCheck | MastraCheck | HttpCheck | TcpCheck,
    Field(discriminator="kind"),
]
# Every kind, in the union's order (what `kind` may be).
KINDS: tuple[str, ...] = tuple(
    model.model_fields["kind"].default for model in get_args(get_args(Check)[0])
)


def default_panic(check: Check) -> bool:
    """`panic` of a check that does not set it: true for convex, mastra and shared checks,
    false for the others, and always for `app` (the container beside)."""
    return check.name != APP_CHECK and (check.kind in PANIC_KINDS or check.shared)
