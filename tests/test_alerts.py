"""The alert rules (monitoring/alerts.yml): valid and unit-tested by Debian's promtool
(monitoring/alerts_test.yml), and complete: every alert has a severity, its annotations and a
runbook, a case where it fires and one where it stays quiet, a row in monitoring/README.md, and
uses only metrics the worker exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tools.launcher import ROOT
from tools.prometheus import prometheus_binaries
from worker.monitoring import WorkerMetrics

RULES = ROOT / "monitoring" / "alerts.yml"
RULE_TESTS = ROOT / "monitoring" / "alerts_test.yml"
README = ROOT / "monitoring" / "README.md"
SEVERITIES = ("page", "ticket")
ANNOTATIONS = ("summary", "description", "runbook")
METRIC_NAME = re.compile(r"\branker_[a-z_]+")
# The sample names each metric type exposes. Taken from the type rather than from the samples:
# a labelled metric (ranker_dead_letters, ...) has no sample until a first child is made.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(prometheus_binaries().promtool), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def cases(rule_tests: dict[str, Any]) -> list[dict[str, Any]]:
    return [case for test in rule_tests["tests"] for case in test.get("alert_rule_test", [])]


def exported_metric_names() -> set[str]:
    """Every sample name WorkerMetrics' registry exposes, suffixes included."""
    return {family.name + suffix for family in WorkerMetrics().registry.collect()
            for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",))}


def readme_alert_rows() -> dict[str, list[str]]:
    """The `## Alerts` table of monitoring/README.md: alert name -> its other cells."""
    section = README.read_text().split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")][2:]  # no header
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table]
    return {row[0]: row[1:] for row in rows}


def test_promtool_accepts_the_rules():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_unit_tests_pass():
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_severity_and_a_runbook():
    problems = []
    for alert in alerts(load(RULES)):
        if alert.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{alert['alert']}: severity not one of {SEVERITIES}")
        annotations = alert.get("annotations", {})
        problems += [f"{alert['alert']}: no {name}" for name in ANNOTATIONS
                     if not str(annotations.get(name, "")).strip()]
        if "\n" in str(annotations.get("runbook", "")).strip():
            problems.append(f"{alert['alert']}: the runbook must be one line")
    assert not problems


def test_every_alert_has_a_firing_and_a_quiet_case():
    tested = cases(load(RULE_TESTS))
    fires = {case["alertname"] for case in tested if case.get("exp_alerts")}
    # Explicitly empty: a case with no exp_alerts key at all is more likely an omission.
    quiet = {case["alertname"] for case in tested if case.get("exp_alerts") == []}
    defined = [alert["alert"] for alert in alerts(load(RULES))]
    assert [name for name in defined if name not in fires] == [], "no case where it fires"
    assert [name for name in defined if name not in quiet] == [], "no case where it is quiet"


def test_every_case_names_an_alert():
    """promtool passes a quiet case for an alert that does not exist: a misspelt name would
    look tested."""
    defined = {alert["alert"] for alert in alerts(load(RULES))}
    assert {case["alertname"] for case in cases(load(RULE_TESTS))} <= defined


def test_alerts_use_only_metrics_the_worker_exports():
    used = {alert["alert"]: set(METRIC_NAME.findall(alert["expr"]))
            for alert in alerts(load(RULES))}
    assert all(used.values()), "an alert expression names no ranker_ metric"
    exported = exported_metric_names()
    unknown = {alert: sorted(names - exported) for alert, names in used.items()
               if names - exported}
    assert not unknown


def test_the_readme_table_matches_the_rules():
    """Its severity and runbook columns are the rules' own, word for word."""
    documented = {name: (cells[1], cells[2]) for name, cells in readme_alert_rows().items()}
    assert documented == {alert["alert"]: (alert["labels"]["severity"],
                                           alert["annotations"]["runbook"])
                          for alert in alerts(load(RULES))}
