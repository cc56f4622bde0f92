"""config/grafana-dashboard.json: its shape, and every query against a real sidecar."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import procs, promql
from tests.support import prometheus as prom
from tests.support.prometheus import SHARED_CHECK

DASHBOARD_FILE = prom.CONFIG / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# What Grafana would put in for the variables when querying the test Prometheus (1s scrapes).
VARIABLES = {"instance": ".+", "check": ".+", "__rate_interval": "10s", "__interval": "2s"}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, expression, legend format) of every panel target."""
    return [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def variable_queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, series expression, label) of every `label_values(expr, label)` variable."""
    found = []
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        text = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", text, re.S)
        assert match, f"variable {var['name']}: unexpected query {text!r}"
        found.append((var["name"], match.group(1), match.group(2)))
    return found


def all_expressions(board: dict[str, Any]) -> list[str]:
    return [expr for _, expr, _ in panel_queries(board)] + [
        expr for _, expr, _ in variable_queries(board)
    ]


def test_dashboard_shape() -> None:
    """The dashboard imports as it should: schemaVersion 39, a Prometheus datasource variable
    DS_PROMETHEUS that every panel and target uses, multi-value `instance` and `check`
    variables every query filters on, unique panel ids, a 24-column grid with no two panels
    overlapping, rows that only title what follows them, and a panel for each subject of the
    issues (the fleet row's included)."""
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] == "health-sidecar"
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("instance", "check"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["multi"]
        assert variables[name]["includeAll"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(board):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], "overlaps", cells[(x, y)])
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":  # a full-width title bar; its panels follow it
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1), panel["title"]
            assert "targets" not in panel, panel["title"]
            assert panel["panels"] == [] or panel["collapsed"], panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert "$instance" in target["expr"], (panel["title"], target["expr"])
    titles = " | ".join(panel["title"] for panel in panels(board)).lower()
    subjects = ("check status", "latency", "readiness", "store", "drain", "transitions")
    for subject in (*subjects, "fleet", "ready instances", "shared outages", "holders"):
        assert subject in titles, subject
    rows = [panel["title"] for panel in board["panels"] if panel["type"] == "row"]
    assert rows == ["Fleet"]
    latency = next(p for p in panels(board) if p["title"].startswith("Check latency"))
    quantiles = {re.match(r"histogram_quantile\(([\d.]+),", t["expr"]) for t in latency["targets"]}
    assert {m.group(1) for m in quantiles if m} == {"0.5", "0.9", "0.99"}


def test_metric_name_extraction() -> None:
    """The extractor the next test relies on finds metric names - histogram buckets, names
    under functions, aggregations, binary operators, offsets, `__name__` matchers - and
    nothing else (label names, functions, keywords, strings, durations, Grafana variables),
    so a bogus name in a panel cannot slip through."""
    cases = {
        'histogram_quantile(0.9, sum by (check, le) (rate(a_bucket{check=~"$check"}'
        "[$__rate_interval])))": {"a_bucket"},
        'time() - b{x=~"${instance}"}\n  and b > 0 or vector(0)': {"b"},
        "max without (instance) (c offset 5m) / ignoring(x) group_left(y) d": {"c", "d"},
        'label_replace(e, "dst", "$1", "src", "(.*)") > bool 1e3': {"e"},
        'count({__name__="f"}) unless on (job) rate(g[5m:1m])': {"f", "g"},
        'sidecar_bogus_total{result!="ok"}': {"sidecar_bogus_total"},
        'sum(up{job="health-sidecar"})': {"up"},
    }
    for expr, names in cases.items():
        assert promql.metric_names(expr) == names, expr


def test_every_metric_the_dashboard_queries_is_on_a_real_metrics_page(
    failing_app_sidecar: procs.Proc,
) -> None:
    """Every metric name in every panel target and variable query is a sample name on a real
    sidecar's /metrics page (histograms as their `_bucket`/`_sum`/`_count` series); only `up`,
    which Prometheus makes itself, is allowed besides. A panel querying a metric the sidecar
    does not expose fails here."""
    with urllib.request.urlopen(failing_app_sidecar.url + "/metrics", timeout=5) as resp:
        exposed = promql.exposed_names(resp.read().decode())
    used: set[str] = set()
    for expr in all_expressions(dashboard()):
        names = promql.metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        missing = names - exposed - promql.SYNTHETIC
        assert not missing, f"{expr!r} queries {sorted(missing)}, not on /metrics"
        used |= names
    # The subjects, by the metric that carries each.
    assert {
        "sidecar_check_status",
        "sidecar_check_duration_seconds_bucket",
        "sidecar_ready",
        "sidecar_store_requests_total",
        "sidecar_draining",
        "sidecar_check_transitions_total",
        "sidecar_shared_outage",
        "sidecar_check_holder",
    } <= used


@pytest.fixture(scope="module")
def prometheus(
    failing_app_sidecar: procs.Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[procs.Proc]:
    """The real Prometheus with the shipped config, scraping `failing_app_sidecar`."""
    target = failing_app_sidecar.url.removeprefix("http://")
    proc = prom.start(target, tmp_path_factory.mktemp("prometheus"))
    try:
        yield proc
    finally:
        proc.stop()


async def test_every_dashboard_query_returns_data_through_prometheus(
    prometheus: procs.Proc,
) -> None:
    """Every panel target and variable query, with Grafana's variables filled in, is valid
    PromQL for the real Prometheus scraping a real sidecar and returns at least one series;
    every `{{label}}` of a legend is a label of every series it names; every variable's label
    is on its series. The check-status timeline shows app as "fail", Convex, Mastra and the
    shared check as "pass", as the sidecar reports them; the fleet row shows the job's one
    sidecar reporting and not ready, no shared outage, and the sidecar as the one holder of
    the shared check (0 for every other check)."""
    board = dashboard()
    queries = [
        (title, promql.grafana_variables(expr, VARIABLES), legend)
        for title, expr, legend in panel_queries(board)
    ] + [
        (f"variable {name}", promql.grafana_variables(expr, VARIABLES), f"{{{{{label}}}}}")
        for name, expr, label in variable_queries(board)
    ]
    results: dict[str, list[dict[str, Any]]] = {}

    async def all_answer() -> bool | None:
        for _, expr, _ in queries:
            if not results.get(expr):
                results[expr] = await prom.query(prometheus.url, expr)
        return True if all(results.values()) else None

    await prom.eventually(
        all_answer,
        within=30,
        what=lambda: "no data for " + repr([e for e, r in results.items() if not r]),
        every=0.5,
    )
    for title, expr, legend in queries:
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            for series in results[expr]:
                assert label in series["metric"], (title, legend, series["metric"])
    # The state timeline's encoding, read back through its own value mappings.
    status = next(p for p in panels(board) if p["title"] == "Check status")
    texts = status["fieldConfig"]["defaults"]["mappings"][0]["options"]
    expr = promql.grafana_variables(status["targets"][0]["expr"], VARIABLES)
    shown = {
        s["metric"]["check"]: texts[str(int(float(s["value"][1])))]["text"] for s in results[expr]
    }
    assert shown == {"convex": "pass", "mastra": "pass", "app": "fail", SHARED_CHECK: "pass"}

    # The fleet row, from Prometheus' own aggregation of the sidecars' series.
    def by(title: str, label: str) -> dict[tuple[str, str], float]:
        panel = next(p for p in panels(board) if p["title"] == title)
        values = {}
        for target in panel["targets"]:
            expr = promql.grafana_variables(target["expr"], VARIABLES)
            for s in results[expr]:
                values[(target["refId"], s["metric"][label])] = float(s["value"][1])
        return values

    checks = {"convex", "mastra", "app", SHARED_CHECK}
    assert by("Fleet: ready instances", "job") == {("A", prom.JOB): 0.0, ("B", prom.JOB): 1.0}
    assert by("Shared outages", "check") == {("A", check): 0.0 for check in checks}
    holders = by("Shared-check holders", "check")
    assert holders == {("A", check): float(check == SHARED_CHECK) for check in checks}
