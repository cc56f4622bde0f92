"""Metric names in PromQL expressions (dashboards, alerts) and on a `/metrics` page."""

from __future__ import annotations

import re

# Series Prometheus makes itself, per target: never on a `/metrics` page.
SYNTHETIC = frozenset({"up"})

# Words that look like identifiers but are no metric names. Functions and aggregations are
# recognised by the `(` that follows them, so they need no list.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
    | {"by", "without", "on", "ignoring", "group_left", "group_right"}
)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*["']([^"']+)["']""")
_STRING = re.compile(r""""(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`""")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")  # Grafana's template variables
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number, a name or a dot before it (`5m`, `1e3`, `x.y`).
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_SAMPLE_NAME = re.compile(r"[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression selects: identifiers that are not functions,
    aggregations, keywords, label names (in matchers or grouping clauses), strings, durations
    or Grafana variables."""
    names = set(_NAME_MATCHER.findall(expr))
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub("", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        name = match.group()
        if text[match.end() :].lstrip().startswith("("):
            continue  # rate(, sum(, histogram_quantile(, vector(, time(
        if name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_names(page: str) -> set[str]:
    """The names of the samples on a `/metrics` page (Prometheus text format): what a
    Prometheus scraping it stores, so a histogram counts as its `_bucket`, `_sum` and `_count`
    series and never by its bare name."""
    names = set()
    for line in page.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE_NAME.match(line)
            assert match, f"not a sample line: {line!r}"
            names.add(match.group())
    return names


def grafana_variables(expr: str, values: dict[str, str]) -> str:
    """`expr` with Grafana's variables (`$name`, `${name}`, `${name:fmt}`, `[[name]]`)
    replaced by `values[name]`: what Grafana would send to Prometheus."""

    def replace(match: re.Match[str]) -> str:
        token = match.group()
        name = re.sub(r"^\$\{|^\$|^\[\[|\]\]$|\}$", "", token).split(":")[0]
        assert name in values, f"no test value for Grafana variable {token} in {expr!r}"
        return values[name]

    return _VARIABLE.sub(replace, expr)
