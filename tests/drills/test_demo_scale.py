"""`tierwatch demo --profile scale`: the HA chain remote-writes to VictoriaMetrics, vmalert runs the kit's
rules there, the overview dashboard's queries get data from it, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch.recovery.inbox import incident_key
from tierwatch_lab.demo_scale import REPLICA_LABELS
from tierwatch_lab.stack import wait_for

from helpers import CliProcess, processes_mentioning

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TARGETS = 4 + 2 + 5 + 4  # app servers, LBs, Redis, PostgreSQL
# overview panels that show every demo stack something (the others, e.g. firing alerts, may be empty)
WITH_DATA = (
    "Targets down by tier",
    "Live primaries",
    "Load balancer pair",
    "App servers by region",
    "Redis cluster",
    "PostgreSQL cluster",
    "Replication lag (bytes)",
)


def overview_queries() -> dict[str, str]:
    """Panel title -> expr of the overview dashboard, variables as Grafana's "All"."""
    panels = json.loads((ROOT / "dashboards" / "overview.json").read_text())["panels"]
    return {
        panel["title"]: re.sub(
            r"\$(\w+)|\$\{(\w+)\}",
            ".*",
            target["expr"].replace("$__rate_interval", "5s").replace("$__range", "5m"),
        )
        for panel in panels
        for target in panel.get("targets", [])
    }


def kit_groups() -> dict[str, int]:
    """Rule group name -> number of rules, over rules/*.rules.yml."""
    return {
        group["name"]: len(group["rules"])
        for path in sorted((ROOT / "rules").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    }


def query(url: str, expr: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    return body


def result(url: str, expr: str) -> list[dict[str, Any]]:
    body = query(url, expr)
    assert body["status"] == "success", (expr, body)
    found: list[dict[str, Any]] = body["data"]["result"]
    return found


def remote_write_counts(prometheus: str) -> tuple[float, float]:
    """(samples sent, samples failed) of a Prometheus' remote write queue."""
    text = httpx.get(f"{prometheus}/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))

    return total("prometheus_remote_storage_samples_total"), total(
        "prometheus_remote_storage_samples_failed_total"
    )


def test_scale_profile_global_store_vmalert_and_clean_stop() -> None:
    demo = CliProcess("demo", "--profile", "scale")
    printed, lines = demo.printed, demo.lines
    stack_dir = ""
    try:
        config = wait_for(lambda: printed(r"Config\s+(\S+)"), 240, "demo config")
        stack_dir = str(Path(config).parents[1])
        vm = printed(r"VictoriaMetrics (http://\S+)\s")
        vmalert = printed(r"vmalert\s+(http://\S+?)/api/v1/rules\s")
        pair = re.findall(r"replica [ab] (http://\S+?)/alerts", "".join(lines))
        peers = re.findall(r"http://[\d.:]+", printed(r"Alertmanager\s+(.+)") or "")
        assert vm and vmalert and len(pair) == 2 and len(peers) == 2, "".join(lines)
        assert "long-term/global store" in "".join(lines)

        # both replicas remote-write, nothing fails, and VictoriaMetrics received what both sent
        def both_writing() -> bool:
            counts = [remote_write_counts(p) for p in pair]
            return all(sent > 1000 and failed == 0 for sent, failed in counts)

        wait_for(both_writing, 60, "both Prometheus replicas remote-writing")
        sent = sum(remote_write_counts(p)[0] for p in pair)
        inserted = float(
            next(
                line.rsplit(" ", 1)[1]
                for line in httpx.get(f"{vm}/metrics", timeout=10).text.splitlines()
                if line.startswith('vm_rows_inserted_total{type="promremotewrite"}')
            )
        )
        assert inserted >= sent, (inserted, sent)
        # ... and the store keeps one copy of each series (no replica label), every target up
        wait_for(
            lambda: len(result(vm, "tierwatch_up == 1")) == TARGETS, 60, "every target up in VictoriaMetrics"
        )
        assert len(result(vm, "tierwatch_up")) == TARGETS
        assert not result(vm, '{__name__=~"tierwatch_.*", replica!=""}')

        # the overview dashboard's queries on VictoriaMetrics: all accepted, the stack's panels have data
        queries = overview_queries()
        assert set(WITH_DATA) <= set(queries)
        wait_for(
            lambda: all(result(vm, queries[title]) for title in WITH_DATA), 60, "overview panels with data"
        )
        failures = [title for title, expr in queries.items() if query(vm, expr)["status"] != "success"]
        assert not failures, failures

        # vmalert: every kit group loaded with all its rules, each evaluated twice, no error
        def groups() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{vmalert}/api/v1/rules", timeout=10).json()["data"][
                "groups"
            ]
            return found

        assert {g["name"]: len(g["rules"]) for g in groups()} == kit_groups()
        before = {(g["name"], r["name"], r["id"]): r["lastEvaluation"] for g in groups() for r in g["rules"]}

        def evaluated_since_start() -> bool:
            now = {(g["name"], r["name"], r["id"]): r["lastEvaluation"] for g in groups() for r in g["rules"]}
            return now.keys() == before.keys() and all(now[key] != before[key] for key in now)

        wait_for(evaluated_since_start, 60, "every vmalert rule evaluated again")
        errors = [
            (g["name"], r["name"], r["lastError"]) for g in groups() for r in g["rules"] if r["lastError"]
        ]
        assert not errors, errors

        # vmalert notifies both Alertmanager peers; its copy and the pair's are one incident for recovery
        def watchdogs(peer: str) -> list[dict[str, str]]:
            alerts = httpx.get(f"{peer}/api/v2/alerts", timeout=10).json()
            return [a["labels"] for a in alerts if a["labels"]["alertname"] == "Watchdog"]

        for peer in peers:
            wait_for(lambda p=peer: len(watchdogs(p)) == 3, 60, f"Watchdog from a, b and vmalert on {peer}")
        copies = watchdogs(peers[0])
        assert sorted(c.get("replica", "") + c.get("alertgroup", "") for c in copies) == [
            "a",
            "b",
            "tierwatch-kit",
        ]
        assert len({incident_key(c) for c in copies}) == 2  # the default replica labels miss alertgroup
        assert len({incident_key(c, REPLICA_LABELS) for c in copies}) == 1
        for replica in sorted(Path(stack_dir, "chain").glob("recovery-*.yml")):
            settings = yaml.safe_load(replica.read_text())["recovery"]
            assert settings["replica_labels"] == list(REPLICA_LABELS) and settings["ha"]["etcd"]
        assert len(list(Path(stack_dir, "chain").glob("recovery-*.yml"))) == 2

        # one replica dies: the store goes on receiving the other's samples, no gap
        [victim] = [
            pid
            for pid in processes_mentioning(f"{stack_dir}/prometheus-a/")
            if "prometheus" in Path(f"/proc/{pid}/comm").read_text()
        ]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        wait_for(
            lambda: min(float(s["value"][1]) for s in result(vm, "timestamp(tierwatch_up)")) > killed + 3,
            30,
            "samples written after replica a died",
        )
        assert len(result(vm, "tierwatch_up")) == TARGETS
    finally:
        code = demo.stop(90)
    assert code == 0, "".join(lines)
    assert "stopped; every process and data directory removed" in "".join(lines)
    assert stack_dir and not Path(stack_dir).exists()
    assert not processes_mentioning(stack_dir)
    ours = re.findall(r"\btw-[0-9a-f]+-lb\d\b", "".join(lines))
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in ours if ns in namespaces], namespaces
