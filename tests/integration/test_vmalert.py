"""Beyond one Prometheus: the kit's rules on vmalert and the dashboards' queries on VictoriaMetrics (Debian's
``victoria-metrics`` package, v1.79), live. Prometheus scrapes the real exporter and remote-writes to
VictoriaMetrics; vmalert evaluates rules/*.rules.yml against it and sends to a real Alertmanager.

vmalert v1.79 refuses exactly one thing in the rule files: ``keep_firing_for`` (Prometheus 2.42+), so
the live run uses copies without it (stack.victoria.rules_for_vmalert) and the first test pins that this
is the only difference."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from tierwatch_lab.kit import kit_dir
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.alertmanager import rewrite_for_test, start_alertmanager
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.prometheus import ScrapeJob, start_prometheus
from tierwatch_lab.stack.tierwatch import start_exporter
from tierwatch_lab.stack.victoria import (
    UNKNOWN_TO_VMALERT,
    rules_for_vmalert,
    start_victoria_metrics,
    start_vmalert,
    vmalert_dry_run,
)

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "rules").glob("*.rules.yml"))
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(file, panel title, expr) of every target of dashboards/*.json, variables as Grafana's "All"."""
    found = []
    for path in sorted((ROOT / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "5s").replace("$__range", "5m")
                found.append((path.name, panel.get("title", ""), VARIABLE.sub(".*", expr)))
    return found


def test_vmalert_refuses_only_keep_firing_for_in_the_kit_rules(tmp_path: Path) -> None:
    code, output = vmalert_dry_run(RULES)
    using = {
        rule.get("alert")
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if any(field in rule for field in UNKNOWN_TO_VMALERT)
    }
    if using:
        assert code != 0
        problems = [line for line in output.splitlines() if "invalid group" in line]
        assert problems and all("unknown fields in rule: keep_firing_for" in p for p in problems), output
    code, output = vmalert_dry_run(rules_for_vmalert(RULES, tmp_path))
    assert code == 0, output


@pytest.mark.slow
def test_kit_rules_on_vmalert_and_dashboard_queries_on_victoria_metrics(stack: Stack) -> None:
    down = free_port()  # es-1: nothing listens, so AppInstanceDown goes pending
    up = start_http_backend(stack, "es-2")
    clusters = [
        {"name": "web", "tier": "app",
         "targets": [{"name": "es-1", "region": "primary", "url": f"http://127.0.0.1:{down}/health"},
                     {"name": "es-2", "region": "primary", "url": up.url}]},
    ]  # fmt: skip
    config = stack.path("exporter.yml")
    config.write_text(
        yaml.safe_dump({"monitor": {"interval": "1s", "timeout": "500ms"}, "clusters": clusters})
    )
    exporter = start_exporter(stack, config)
    vm = start_victoria_metrics(stack)
    start_prometheus(stack, [ScrapeJob("tierwatch", [exporter.address])], remote_write=[vm.write_url])
    wait_for(lambda: vm.value('tierwatch_up{target="es-2"}') == 1, 30, "samples in VictoriaMetrics")

    am_text = rewrite_for_test(
        (kit_dir("alertmanager") / "alertmanager.yml").read_text(), stack.directory("am-secrets")
    )
    manager = start_alertmanager(stack, am_text)
    vmalert = start_vmalert(
        stack, rules_for_vmalert(RULES, stack.directory("vmalert-rules")), vm, [f"127.0.0.1:{manager.port}"]
    )

    def evaluated() -> bool:
        rules = [rule for group in vmalert.groups() for rule in group["rules"]]
        return bool(rules) and all(
            not str(rule.get("lastEvaluation", "0001")).startswith("0001") for rule in rules
        )

    wait_for(evaluated, 30, "every rule evaluated")
    time.sleep(2)  # and evaluated again
    errors = [
        (rule["name"], rule["lastError"])
        for group in vmalert.groups()
        for rule in group["rules"]
        if rule.get("lastError")
    ]
    assert not errors, errors
    count = sum(len(group["rules"]) for group in vmalert.groups())
    assert count == sum(
        len(group["rules"]) for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
    )

    def app_instance_down() -> list[dict[str, object]]:
        return [
            a
            for a in vmalert.alerts()
            if a["name"] == "AppInstanceDown" and a["labels"].get("target") == "es-1"
        ]

    [alert] = wait_for(app_instance_down, 30, "AppInstanceDown active on vmalert")
    assert alert["state"] in ("pending", "firing")
    recorded = [
        rule["name"] for group in vmalert.groups() for rule in group["rules"] if rule["type"] == "recording"
    ]
    assert recorded and wait_for(
        lambda: vm.value(f'count({{__name__=~"{"|".join(map(re.escape, recorded))}"}})'),
        30,
        "recording rules written back to VictoriaMetrics",
    )

    failures = []
    queries = dashboard_queries()
    assert len(queries) >= 100, "the dashboards hold the kit's panels"
    now = time.time()
    for file, title, expr in queries:
        for body in (
            vm.api("query", query=expr),
            vm.api("query_range", query=expr, start=str(now - 60), end=str(now), step="5"),
        ):
            if body.get("status") != "success":
                failures.append(f"{file} / {title}: {expr}: {body.get('error')}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("field", UNKNOWN_TO_VMALERT)
def test_rules_for_vmalert_changes_nothing_else(tmp_path: Path, field: str) -> None:
    for source, copy in zip(RULES, rules_for_vmalert(RULES, tmp_path), strict=True):
        original = yaml.safe_load(source.read_text())
        for group in original["groups"]:
            for rule in group["rules"]:
                rule.pop(field, None)
        assert yaml.safe_load(copy.read_text()) == original
