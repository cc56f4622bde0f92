"""config/prometheus.yml, config/alerts.yml and config/alerts.test.yml, checked by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support import procs, promql
from tests.support.prometheus import CONFIG, binary

ALERTS = CONFIG / "alerts.yml"
ALERT_TESTS = CONFIG / "alerts.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], cwd=procs.ROOT, capture_output=True, text=True, timeout=60
    )


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.M)


def test_prometheus_config_is_valid() -> None:
    """`promtool check config config/prometheus.yml` passes, and finds alerts.yml through the
    config's relative `rule_files` entry."""
    result = promtool("check", "config", "config/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "config/alerts.yml" in result.stdout


def test_commented_docker_sd_job_is_valid(tmp_path: Path) -> None:
    """The commented Docker service-discovery job, uncommented in place of the static job, is
    a valid config too (so the alternative the file offers does not rot)."""
    text = (CONFIG / "prometheus.yml").read_text()
    block = re.search(r"^# BEGIN docker_sd\n(.*?)^# END docker_sd$", text, re.M | re.S)
    assert block, "config/prometheus.yml lost its docker_sd block markers"
    job = "".join(line[1:] + "\n" for line in block.group(1).splitlines())
    assert "docker_sd_configs:" in job
    head = text[: text.index("\nscrape_configs:")]
    (tmp_path / "prometheus.yml").write_text(head + "\nscrape_configs:\n" + job)
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    """`promtool check rules config/alerts.yml` passes with every alert of docs/metrics.md."""
    result = promtool("check", "rules", "config/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout
    assert {
        "SidecarCheckFailing",
        "SidecarNotReady",
        "SidecarStoreDown",
        "SidecarSharedOutage",
        "SidecarDown",
        "SidecarTargetsMissing",
    } <= set(alert_names())


def test_alert_unit_tests_pass() -> None:
    """`promtool test rules config/alerts.test.yml`: every case passes."""
    result = promtool("test", "rules", "config/alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_cases_that_fire_and_that_do_not() -> None:
    """alerts.test.yml evaluates every alert of alerts.yml at least once expecting it to fire
    and at least once expecting silence."""
    fires: set[str] = set()
    silent: set[str] = set()
    cases = re.split(r"^\s*- eval_time:", ALERT_TESTS.read_text(), flags=re.M)[1:]
    for case in cases:
        name = re.search(r"^\s*alertname: (\w+)", case, re.M)
        assert name, case
        (fires if re.search(r"^\s*exp_alerts:", case, re.M) else silent).add(name.group(1))
    assert set(alert_names()) == fires, "alerts without a case that fires"
    assert set(alert_names()) == silent, "alerts without a case that stays silent"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (
            "expr: sidecar_check_up == 0\n        for: 2m",
            "expr: sidecar_check_up == 0\n        for: 1m",
        ),
        (" unless on (job, instance) sidecar_draining == 1", ""),
        (
            "expr: sidecar_store_up == 0\n        for: 5m",
            "expr: sidecar_store_up == 0\n        for: 30s",
        ),
        ('absent(up{job="health-sidecar"})', 'absent(up{job="sidecar"})'),
        (
            "sidecar_drain_started_timestamp_seconds > 86400",
            "sidecar_drain_started_timestamp_seconds > 8640",
        ),
        ("(sidecar_drain_until_timestamp_seconds == 0 and ", "("),
    ],
    ids=[
        "shorter-for",
        "draining-not-excluded",
        "store-blip-fires",
        "wrong-job",
        "drain-limit-2h",
        "drain-limit-ignores-for",
    ],
)
def test_unit_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """A plausible mistake in alerts.yml (a shorter `for`, draining counted as not ready, a
    store alert that fires on a blip, a wrong job name, a forgotten-drain limit that is not a
    day or that also counts drains given an end) makes `promtool test rules` fail: the unit
    tests pin the rules' behaviour, not only their syntax."""
    text = ALERTS.read_text()
    assert text.count(old) == 1, old
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr


def test_alerts_query_only_metrics_a_real_sidecar_exposes(
    failing_app_sidecar: procs.Proc,
) -> None:
    """Every metric an alert expression selects is on a real sidecar's /metrics page (or is
    `up`, which Prometheus makes itself): promtool's unit tests feed the rules their own
    series, so a misspelt name would pass them."""
    exprs = re.findall(r"^\s*expr: (.+)$", ALERTS.read_text(), re.M)
    assert len(exprs) == len(alert_names())
    with urllib.request.urlopen(failing_app_sidecar.url + "/metrics", timeout=5) as resp:
        exposed = promql.exposed_names(resp.read().decode())
    for expr in exprs:
        names = promql.metric_names(expr)
        assert names, expr
        assert names <= exposed | promql.SYNTHETIC, (expr, names - exposed)
