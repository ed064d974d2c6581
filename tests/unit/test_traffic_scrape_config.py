"""The shipped configs scrape real traffic as rules/traffic.rules.yml expects: HAProxy's built-in
exporter as job "haproxy" and the apps' /metrics as job "app", every target labelled with the
tierwatch label model that the exporter's config gives it (compose), or relabelled so (Kubernetes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tierwatch_lab.stack.haproxy import render_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
SELECTORS = yaml.safe_load((ROOT / "rules" / "src" / "settings.yml").read_text())["selectors"]


def _job(selector: str) -> str:
    match = re.fullmatch(r'job="([^"]+)"', selector)
    assert match, selector
    return match.group(1)


def test_compose_scrapes_every_lb_and_app_with_its_target_labels() -> None:
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    exporter = yaml.safe_load((COMPOSE / "tierwatch.yml").read_text())
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    metrics_port = re.search(
        r"frontend fe_metrics\n(?:\s+.*\n)*?\s+bind :(\d+)", (COMPOSE / "haproxy" / "haproxy.cfg").read_text()
    )
    assert metrics_port, "haproxy.cfg has no fe_metrics frontend"
    for tier, selector, port in (("lb", "haproxy", metrics_port.group(1)), ("app", "app", "8080")):
        job = jobs[_job(SELECTORS[selector])]
        scraped = {tuple(c["targets"]): c["labels"] for c in job["static_configs"]}
        expected = {
            (f"{t['name']}:{port}",): {
                "tier": tier,
                "cluster": c["name"],
                "target": t["name"],
                "region": t["region"],
            }
            for c in exporter["clusters"]
            if c["tier"] == tier
            for t in c["targets"]
        }
        assert scraped == expected, selector
        assert all(
            t["name"] in compose for c in exporter["clusters"] if c["tier"] == tier for t in c["targets"]
        )
    apps: list[dict[str, Any]] = [compose["app-1"], compose["app-2"]]
    assert [a["environment"]["APP_NAME"] for a in apps] == ["app-1", "app-2"]  # app_info names the target
    assert "use-service prometheus-exporter" in (COMPOSE / "haproxy" / "haproxy.cfg").read_text()


def test_kubernetes_pod_monitors_name_the_jobs_and_target_labels() -> None:
    monitors = {
        m["metadata"]["name"]: m
        for m in yaml.safe_load_all(
            (ROOT / "deploy" / "kubernetes" / "base" / "traffic-monitors.yaml").read_text()
        )
    }
    for name, selector, tier in (("tierwatch-haproxy", "haproxy", "lb"), ("tierwatch-app", "app", "app")):
        (endpoint,) = monitors[name]["spec"]["podMetricsEndpoints"]
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        assert relabel["job"]["replacement"] == _job(SELECTORS[selector])
        assert relabel["tier"]["replacement"] == tier
        assert {"cluster", "region", "target"} <= set(relabel)
        assert monitors[name]["spec"]["selector"]["matchLabels"] == {"tierwatch.io/scrape": selector}
    kustomization = (ROOT / "deploy" / "kubernetes" / "base" / "kustomization.yaml").read_text()
    assert "traffic-monitors.yaml" in kustomization


def test_lab_lbs_serve_the_exporter_only_when_asked(tmp_path: Path) -> None:
    with_metrics = render_config("lb-1", 8080, tmp_path / "s", [("es-1", 3001)], metrics_port=8405)
    assert "bind 127.0.0.1:8405" in with_metrics
    assert "http-request use-service prometheus-exporter if { path /metrics }" in with_metrics
    assert "prometheus-exporter" not in render_config("lb-1", 8080, tmp_path / "s", [("es-1", 3001)])
