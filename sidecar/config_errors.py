"""Configuration errors as a user reads them: one line per problem, naming where the bad value
came from: the environment variable of a setting (`SIDECAR_PORT (port): ...`), or the TOML
file and its key (`/etc/sidecar.toml: port: ...`), and a check by index, name and kind
(`checks[0] (payments, http).body_regex: ...`)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from sidecar.checks import KINDS

# A spelling of a field (lower case) -> (the field's name, its environment names).
FieldNames = Mapping[str, tuple[str, tuple[str, ...]]]
# The error type of a problem found across fields (`problem`).
CROSS_FIELD = "invalid_setting"


class ConfigError(Exception):
    """The configuration is invalid; the message names each field and its problem."""

    def __init__(self, lines: Sequence[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {line}" for line in lines))


def field_names(model: type[BaseModel]) -> FieldNames:
    """Every spelling of `model`'s fields: the name and each environment name."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        choices = tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) else ()
        for spelling in (name, *choices):
            out[spelling.lower()] = (name, choices)
    return out


def heading(spelling: str, fields: FieldNames) -> str:
    """How a line names a setting: `SIDECAR_CHECKS (checks)`, or the bare name."""
    name, env = fields.get(spelling.lower(), (spelling, ()))
    return f"{env[0]} ({name})" if env else name


def errors(exc: ValidationError) -> list[ErrorDetails]:
    """The problems of `exc`, without URLs or the values given (they may hold secrets)."""
    return exc.errors(include_url=False, include_input=False)


def describe(
    problems: Iterable[ErrorDetails],
    fields: FieldNames,
    files: Mapping[str, str] | None = None,
    env: Collection[str] = (),
) -> list[str]:
    """One line per problem. `files`: the settings (by field name; an unknown key as the file
    spells it) whose value came from a TOML file, and that file's path; `env`: the settings
    the environment set."""
    return [_line(error, fields, files or {}, env) for error in problems]


def problem(loc: tuple[str | int, ...], message: str, check: str | None = None) -> InitErrorDetails:
    """A problem found across fields, at `loc` (`check`: the `name, kind` label of a check).
    `message` names other settings by their environment name; `describe` names a setting the
    file set by its key instead."""
    ctx = {"problem": message} if check is None else {"problem": message, "check": check}
    return InitErrorDetails(
        type=PydanticCustomError(CROSS_FIELD, "{problem}", ctx), loc=loc, input=None
    )


def _spelt_as_keys(message: str, fields: FieldNames, keys: Collection[str]) -> str:
    """`message` with the environment names of the settings `keys` spelt as the file's keys."""
    spelt = {env: name for env, (name, _) in fields.items() if name in keys and env != name}
    if not spelt:
        return message
    pattern = r"\b(" + "|".join(re.escape(env) for env in spelt) + r")\b"
    return re.sub(pattern, lambda m: spelt[m[0].lower()], message, flags=re.IGNORECASE)


def labelled(error: ErrorDetails, checks: Any) -> InitErrorDetails:
    """`error` (inside the checks list) with its check's `name, kind` in the context."""
    ctx: dict[str, Any] = {**error.get("ctx", {}), "problem": error["msg"]}
    index = error["loc"][0] if error["loc"] else None
    if isinstance(index, int) and isinstance(checks, list | tuple) and index < len(checks):
        raw = checks[index]
        if isinstance(raw, dict):
            parts = [raw.get("name"), raw.get("kind")]
            label = ", ".join(_printable(p[:60]) for p in parts if isinstance(p, str) and p)
            if label:
                ctx["check"] = label
    return InitErrorDetails(
        type=PydanticCustomError(error["type"], "{problem}", ctx),
        loc=error["loc"],
        input=error.get("input"),
    )


def _line(
    error: ErrorDetails, fields: FieldNames, files: Mapping[str, str], set_by_env: Collection[str]
) -> str:
    loc = list(error["loc"])
    ctx = error.get("ctx") or {}
    message = str(ctx.get("problem", error["msg"])).removeprefix("Value error, ")
    kind = error["type"]
    if not loc:
        return message
    name, env = fields.get(str(loc[0]).lower(), (str(loc[0]), ()))
    if kind == CROSS_FIELD:
        # In a line about the file, every setting the environment did not set is spelt as
        # the file spells it; elsewhere, those the file set.
        keys = [f for f, _ in fields.values() if f not in set_by_env or f in files]
        message = _spelt_as_keys(message, fields, keys if name in files else list(files))
    rest = loc[1:]
    if name == "checks" and rest and isinstance(rest[0], int):
        label = ctx.get("check")
        head = f"checks[{rest[0]}]" + (f" ({label})" if label else "")
        rest = rest[1:]
        if rest and rest[0] in KINDS:  # the discriminator's tag: already in the label
            rest = rest[1:]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            rest = [*rest, "kind"]
            message = f"must be one of {', '.join(KINDS)}"
        if name in set_by_env and env:
            head = f"{env[0]}: {head}"
    elif name in files:
        head = name
    else:
        head = heading(str(loc[0]), fields)
    if name in files:
        head = f"{files[name]}: {head}"
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "tuple_type" and name == "checks" and not rest:
        message = "must be a list of checks ([[checks]] tables, or a JSON list)"
    elif kind == "missing" and not rest and len(env) > 1:
        message = f"required: set {' or '.join(env)}"
    elif kind == "missing":
        message = "required"
    path = head + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)
    return f"{path}: {message}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)
