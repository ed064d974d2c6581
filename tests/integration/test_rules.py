"""The alerting kit holds together: promtool accepts the rules and their unit tests pass; every alert
is unit-tested firing (with its exact labels and annotations) and silent; every alert carries the
labels and annotations the routes and the recovery service rely on, and has a runbook and a row in
docs/alerts.md; every metric a rule reads is one the exporter, the log programs of logs/mtail/ (or
Prometheus itself) produce."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch.action_catalog import action_names
from tierwatch.metric_catalog import CATALOG
from tierwatch_lab.docs_gen import load_all_metric_modules

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "rules"
TESTS_DIR = RULES_DIR / "tests"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_URL_BASE = yaml.safe_load((RULES_DIR / "src" / "settings.yml").read_text())["runbook_url_base"]
ALERTS_DOC = ROOT / "docs" / "alerts.md"

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))
EXPECTED_RULE_FILES = {
    f"{tier}.rules.yml"
    for tier in ("kit", "lb", "app", "redis", "queues", "postgres", "traffic", "hosts", "backups", "logs")
}
SEVERITIES = {"critical", "warning", "info"}
ACTIONS = set(action_names())  # the action catalogue
# Series Prometheus makes itself, not the exporter.
PROMETHEUS_SERIES = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# prometheus-client's standard collectors, which both kit services export (not in the catalogue).
CLIENT_SERIES = {
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_info",
    "python_gc_objects_collected_total",
    "python_gc_collections_total",
    "python_gc_objects_uncollectable_total",
}
# The counters the mtail programs declare (logs/mtail/*.mtail, documented in logs/README.md).
LOGS_DOC = ROOT / "logs" / "README.md"
LOG_SERIES = {
    name
    for path in sorted((ROOT / "logs" / "mtail").glob("*.mtail"))
    for name in re.findall(r"^counter (tierwatch_\w+)", path.read_text(), re.MULTILINE)
}
# Prefixes of the series checked against the catalogue or CLIENT_SERIES (a misspelt process_ name fails).
CHECKED_PREFIXES = ("tierwatch_", "process_", "python_")
# Alerts that cannot be silent: the dead man's switch fires by design.
ALWAYS_FIRING = {"Watchdog"}
RUNBOOK_SECTIONS = ("## What it means", "## How to check", "## What happens automatically", "## What to do")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) not installed"
)


def load_rules() -> list[tuple[str, dict[str, Any]]]:
    """(file name, rule) for every rule of every file in rules/."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((path.name, rule))
    return found


ALERTS = {rule["alert"]: rule for _, rule in load_rules() if "alert" in rule}
RECORDS = {rule["record"] for _, rule in load_rules() if "record" in rule}


def unit_test_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test case of every promtool test file, with the test's name."""
    cases = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append({"file": path.name, "test": test.get("name", ""), **case})
    return cases


def test_one_rule_file_per_tier_plus_the_kit() -> None:
    assert {p.name for p in RULE_FILES} == EXPECTED_RULE_FILES
    assert len(ALERTS) == sum(1 for _, r in load_rules() if "alert" in r), "duplicate alert names"
    assert len(ALERTS) >= 45


@needs_promtool
def test_promtool_check_rules() -> None:
    done = subprocess.run(
        [PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr


@needs_promtool
@pytest.mark.slow  # promtool evaluates each file for seconds: in the full run, not in --quick
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(test_file: Path) -> None:
    done = subprocess.run(
        [PROMTOOL, "test", "rules", test_file.name],
        cwd=test_file.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_names_are_camel_case_with_a_tier_prefix() -> None:
    prefixes = (
        "LB",
        "App",
        "Tls",
        "Redis",
        "Queue",
        "Postgres",
        "Host",
        "Tierwatch",
        "Recovery",
        "Restore",
        "Dns",
    )
    for name in ALERTS:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert name in ALWAYS_FIRING or name.startswith(prefixes), name


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_labels_and_annotations(name: str) -> None:
    rule = ALERTS[name]
    labels = rule.get("labels", {})
    annotations = rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, f"{name}: severity"
    if "action" in labels:
        assert labels["action"] in ACTIONS, f"{name}: unknown action {labels['action']}"
    assert set(annotations) >= {"summary", "description", "runbook_url"}, name
    assert "{{" not in annotations["summary"], f"{name}: the summary must be static"
    assert "$value" in annotations["description"], f"{name}: the description shows the value"
    if name not in ALWAYS_FIRING and labels.get("tier") != "kit":
        assert "$labels.cluster" in annotations["description"], f"{name}: the description names the cluster"
    assert annotations["runbook_url"] == f"{RUNBOOK_URL_BASE}{name}.md", name
    if "for" in rule:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{name}: for {rule['for']}"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_unit_tested_firing_and_silent(name: str) -> None:
    cases = [case for case in unit_test_cases() if case["alertname"] == name]
    firing = [case for case in cases if case.get("exp_alerts")]
    silent = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"{name}: no promtool test makes it fire"
    if name not in ALWAYS_FIRING:
        assert silent, f"{name}: no promtool test checks it stays silent"
    rule = ALERTS[name]
    for case in firing:
        for expected in case["exp_alerts"]:
            labels = expected.get("exp_labels", {})
            assert {"severity", "tier", "cluster"} <= set(labels), f"{name} in {case['test']}: labels"
            assert labels["severity"] == rule["labels"]["severity"]
            assert labels.get("action") == rule["labels"].get("action"), f"{name}: action label"
            annotations = expected.get("exp_annotations", {})
            assert set(annotations) == {"summary", "description", "runbook_url"}, f"{name}: annotations"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_has_a_runbook(name: str) -> None:
    path = RUNBOOKS / f"{name}.md"
    assert path.is_file(), f"missing runbook {path.relative_to(ROOT)}"
    text = path.read_text()
    assert text.startswith(f"# {name}\n"), path
    for section in RUNBOOK_SECTIONS:
        assert section in text, f"{path.name}: missing section {section!r}"
    assert len(text) > 600, f"{path.name} is too short to help anyone"
    action = ALERTS[name].get("labels", {}).get("action")
    if action:
        assert f"`{action}`" in text, f"{path.name}: does not explain the {action} action"


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == set(ALERTS)


def test_alerts_doc_lists_every_alert_once() -> None:
    text = ALERTS_DOC.read_text()
    rows = re.findall(r"^\| \[`?(\w+)`?\]\(runbooks/(\w+)\.md\) \|", text, re.MULTILINE)
    names = [name for name, _ in rows]
    assert sorted(names) == sorted(ALERTS), set(names) ^ set(ALERTS)
    assert all(name == link for name, link in rows)
    for job in ('job="tierwatch"', 'job="tierwatch-recovery"'):
        assert job in text


def metric_names(expr: str) -> set[str]:
    """Every series name (metric or recording rule) an expression selects."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for token in re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(?=[{\[)\s]|$|[-+*/<>=!])", expr):
        if ":" in token or token.startswith(CHECKED_PREFIXES) or token in PROMETHEUS_SERIES:
            names.add(token)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (tier, cluster) (rate(tierwatch_probe_failures_total{reason="x"}[5m])) '
        '/ on (tier) cluster:tierwatch_live_primaries:count and up{job="tierwatch_x"} == 0'
    )
    assert metric_names(expr) == {
        "tierwatch_probe_failures_total",
        "cluster:tierwatch_live_primaries:count",
        "up",
    }
    expr = "predict_linear(process_open_fds[1h], 14400) / process_max_fd >= 1 and time() > 0"
    assert metric_names(expr) == {"process_open_fds", "process_max_fd"}


def test_every_metric_in_the_rules_is_produced() -> None:
    load_all_metric_modules()
    documented = (ROOT / "docs" / "metrics.md").read_text()
    used: dict[str, set[str]] = {}
    for file_name, rule in load_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(file_name)
    assert len(used) > 40
    missing = []
    for name, files in sorted(used.items()):
        if ":" in name:
            if name not in RECORDS:
                missing.append(f"{name} (recording rule, used in {sorted(files)}) is not defined")
            continue
        if name in PROMETHEUS_SERIES:
            continue
        if name in LOG_SERIES:
            if f"`{name}`" not in LOGS_DOC.read_text():
                missing.append(f"{name} (used in {sorted(files)}) is not in logs/README.md")
            continue
        if name.startswith(("process_", "python_")):
            if name not in CLIENT_SERIES:
                missing.append(f"{name} (used in {sorted(files)}) is not a prometheus-client series")
            continue
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        spec = CATALOG.get(name) or CATALOG.get(base)
        if spec is None or (spec.name != name and spec.kind != "histogram"):
            missing.append(f"{name} (used in {sorted(files)}) is not in the metric catalogue")
        elif f"`{spec.name}`" not in documented:
            missing.append(f"{name} is not in docs/metrics.md")
    assert not missing, "\n".join(missing)


def test_every_recording_rule_is_used_or_shared() -> None:
    exprs = " ".join(rule["expr"] for _, rule in load_rules())
    for record in RECORDS:
        assert re.match(r"^[a-z_]+:tierwatch_[a-z0-9_]+:[a-z0-9_]+$", record), record
    unused = {r for r in RECORDS if r not in exprs}
    # recorded for dashboards only
    assert unused <= {
        "target:tierwatch_probe_errors:ratio_rate5m",
        "cluster:tierwatch_probe_errors:ratio_rate5m",
        # real traffic (traffic.rules.yml): the LB and app dashboards' panels
        "cluster_proxy:tierwatch_haproxy_backend_5xx:ratio_rate5m",
        "cluster_proxy_region:tierwatch_haproxy_server_5xx:ratio_rate5m",
        "cluster_proxy_region:tierwatch_haproxy_server_response_time_seconds:avg5m",
        "cluster_proxy_region:tierwatch_haproxy_server_queue_time_seconds:avg5m",
        "cluster_proxy_region:tierwatch_haproxy_server_retries:rate5m",
    }
