"""The alert rules in deploy/prometheus: valid (`promtool check rules`), tested on synthetic
series (`promtool test rules`: each alert fires on a bad series and not on a healthy one),
and written against metrics the service really exports.

promtool comes from Debian's `prometheus` package, which scripts/system-deps installs; a
missing promtool fails these tests rather than skipping them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.metrics import MetricWrapperBase

from app.observability import metrics

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
REQUIRED_ALERTS = {
    "AgentErrorRateHigh",
    "AgentSessionCostAboveDailyAverage",
    "AgentSessionOver10USD",
    "AgentRunLatencyP95High",
    "ToolFailureRateHigh",
    "QueueLagHigh",
    "CircuitBreakerOpen",
    "AgentThumbsUpRateDropped",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: run scripts/system-deps (Debian: prometheus)")
    return subprocess.run(
        [path, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_a_bad_series_and_not_on_a_healthy_one() -> None:
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_required_alert_exists_and_is_tested() -> None:
    defined = set(re.findall(r"^\s*- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE))
    tested = set(re.findall(r"^\s*alertname: (\w+)$", ALERTS_TEST.read_text(), re.MULTILINE))
    assert defined == REQUIRED_ALERTS
    assert tested == REQUIRED_ALERTS


def test_rules_name_only_metrics_the_service_exports() -> None:
    exported = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                exported |= {family.name + s for s in SUFFIXES[family.type]}
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    exprs = [str(rule["expr"]) for group in groups for rule in group["rules"]]
    named = {name for expr in exprs for name in re.findall(r"\bagentsvc_\w+", expr)}
    assert named
    assert named <= exported, named - exported
