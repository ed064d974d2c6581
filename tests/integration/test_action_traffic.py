"""Traffic actions and cache warm-up against a real HAProxy pair and real app backends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_peers import garbage_runtime_api

from tierwatch.clients.haproxy import parse_show_stat
from tierwatch.config import load_config
from tierwatch.config.recovery import RecoverySettings
from tierwatch.recovery.actions import ActionContext, AlertRef, Outcome, load_action
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.chain import write_lb_cluster
from tierwatch_lab.stack.haproxy import HAProxy, start_haproxy, start_write_lb
from tierwatch_lab.stack.http import HttpBackend, start_http_backend

REGIONS = {"es-1": "primary", "es-2": "primary", "es-3": "failover", "es-4": "failover"}


@dataclass
class Site:
    stack: Stack
    apps: dict[str, HttpBackend]
    lbs: list[HAProxy]
    config: Path


@pytest.fixture
def site(stack: Stack) -> Iterator[Site]:
    apps = {name: start_http_backend(stack, name) for name in REGIONS}
    servers = [(name, app.port) for name, app in apps.items()]
    lbs = [start_haproxy(stack, f"lb-{i}", servers, check_interval_ms=200) for i in (1, 2)]
    # an LB without the app backend (a write LB) in the same config: actions must leave it alone
    other = start_write_lb(stack, "lb-write", "be_other", [("x", 1)])
    clusters: list[dict[str, Any]] = [
        write_lb_cluster("write-lbs", [other]),
        {
            "name": "edge",
            "tier": "lb",
            "targets": [
                {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
                for lb in lbs
            ],
        },
        {
            "name": "web",
            "tier": "app",
            "targets": [
                {"name": name, "region": REGIONS[name], "url": app.url} for name, app in apps.items()
            ],
        },
    ]
    config = stack.path("site.yml")
    config.write_text(yaml.safe_dump({"clusters": clusters}))
    for lb in lbs:
        wait_for(lambda lb=lb: all(s == "UP" for s in server_states(lb).values()), 10, "servers UP")
    yield Site(stack, apps, lbs, config)


def server_states(lb: HAProxy) -> dict[str, str]:
    return {
        r["svname"]: r["status"]
        for r in parse_show_stat(lb.command("show stat"))
        if r["pxname"] == "be_app" and r["type"] == "2"
    }


def server_weights(lb: HAProxy) -> dict[str, int]:
    return {
        r["svname"]: int(r["weight"])
        for r in parse_show_stat(lb.command("show stat"))
        if r["pxname"] == "be_app" and r["type"] == "2"
    }


def run_action(
    site: Site, action: str, labels: dict[str, str], dry_run: bool = False, **cluster_settings: Any
) -> tuple[Outcome, list[dict[str, Any]]]:
    loaded = load_config(site.config)
    settings = RecoverySettings.model_validate(
        {
            "clusters": {"web": {"step_interval": "300ms", **cluster_settings}},
            "auth": {"bearer_token_file": "x"},
        }
    )
    trail: list[dict[str, Any]] = []

    async def ponr() -> None:
        trail.append({"event": "point_of_no_return"})

    cluster = next(c for c in loaded.config.clusters if c.name == "web")
    ctx = ActionContext(
        loaded,
        settings,
        cluster,
        AlertRef("X", "f", "t", labels),
        dry_run,
        lambda event, **f: trail.append({"event": event, **f}),
        ponr,
    )
    return asyncio.run(load_action(action).run(ctx)), trail


class Traffic:
    """Requests through an LB in a background thread until stopped."""

    def __init__(self, lb: HAProxy):
        self.url = f"http://127.0.0.1:{lb.port}/work"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                urllib.request.urlopen(self.url, timeout=2).read()
            except Exception:  # noqa: BLE001 - 5xx and refusals are what we generate
                pass

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_shift_traffic_steps_weights_down_and_drains(site: Site) -> None:
    with Traffic(site.lbs[0]):
        outcome, trail = run_action(site, "shift_traffic", {"region": "primary"})
    assert outcome.status == "succeeded", outcome
    steps = [e["weight_percent"] for e in trail if e["event"] == "step"]
    assert steps == [75, 50, 25, 0]
    assert all(e["error_ratio"] == 0 for e in trail if e["event"] == "step")
    for lb in site.lbs:
        weights, states = server_weights(lb), server_states(lb)
        assert weights["es-1"] == 0 and weights["es-2"] == 0
        assert weights["es-3"] == 100 and weights["es-4"] == 100
        assert states["es-1"] == "DRAIN" and states["es-3"] == "UP"


def test_shift_traffic_stops_and_restores_when_errors_rise(site: Site) -> None:
    for name in ("es-3", "es-4"):  # they pass health checks but fail real requests
        site.apps[name].set_mode("fail_requests")
    with Traffic(site.lbs[0]), Traffic(site.lbs[1]):
        outcome, trail = run_action(site, "shift_traffic", {"region": "primary"})
    assert outcome.status == "failed" and "above budget" in outcome.detail
    assert [e["weight_percent"] for e in trail if e["event"] == "step"] == [75]
    for lb in site.lbs:
        assert server_weights(lb)["es-1"] == 100


def test_shift_traffic_refuses_when_nobody_can_take_the_traffic(site: Site) -> None:
    for name in ("es-3", "es-4"):
        site.apps[name].set_mode("error")
    for lb in site.lbs:
        wait_for(lambda lb=lb: server_states(lb)["es-4"].startswith("DOWN"), 10, "es-4 down")
        wait_for(lambda lb=lb: server_states(lb)["es-3"].startswith("DOWN"), 10, "es-3 down")
    outcome, trail = run_action(site, "shift_traffic", {"region": "primary"})
    assert outcome.status == "refused" and "no server of the other regions" in outcome.detail
    assert not any(e["event"] == "point_of_no_return" for e in trail)
    assert server_weights(site.lbs[0])["es-1"] == 100


def test_regional_failover_only_when_the_region_is_down(site: Site) -> None:
    outcome, _ = run_action(site, "regional_failover", {"region": "primary"}, weight_steps=[0])
    assert outcome.status == "refused" and "answers" in outcome.detail
    site.apps["es-1"].process.kill()
    site.apps["es-2"].process.kill()
    outcome, _ = run_action(site, "regional_failover", {"region": "primary"}, weight_steps=[50, 0])
    assert outcome.status == "succeeded" and outcome.failover
    assert server_states(site.lbs[1])["es-2"].startswith(("DRAIN", "DOWN"))
    assert server_weights(site.lbs[1])["es-2"] == 0


def test_an_lb_answering_garbage_makes_the_action_refuse_before_changing_anything(site: Site) -> None:
    with garbage_runtime_api(site.stack.path("garbage.sock")) as garbage:
        data = yaml.safe_load(site.config.read_text())
        odd = {"name": "lb-odd", "region": "p", "url": "http://127.0.0.1:9/", "stats_socket": str(garbage)}
        data["clusters"].append({"name": "odd", "tier": "lb", "targets": [odd]})
        site.config.write_text(yaml.safe_dump(data))
        outcome, trail = run_action(site, "shift_traffic", {"region": "primary"})
    assert outcome.status == "refused", outcome
    assert outcome.detail.startswith("not moving traffic: lb-odd: runtime API answered garbage")
    assert not any(e["event"] == "point_of_no_return" for e in trail)
    for lb in site.lbs:
        assert all(w == 100 for w in server_weights(lb).values())


def test_dry_run_changes_no_weight(site: Site) -> None:
    outcome, _trail = run_action(site, "shift_traffic", {"region": "failover"}, dry_run=True)
    assert outcome.status == "succeeded" and outcome.detail.startswith("dry run")
    assert all(w == 100 for w in server_weights(site.lbs[0]).values())


def test_cache_warmup_fetches_every_url_with_bounded_concurrency(site: Site) -> None:
    app = site.apps["es-1"]
    urls = [f"http://127.0.0.1:{app.port}/warm/{i}" for i in range(12)]
    outcome, _trail = run_action(site, "cache_warmup", {}, warmup_urls=urls, warmup_concurrency=3)
    assert outcome.status == "succeeded" and outcome.detail == "12 warm-up requests succeeded"
    stats = urllib.request.urlopen(f"http://127.0.0.1:{app.port}/_stats").read().decode()
    assert int(stats.split()[0].split("=")[1]) >= 12
    # at most 3 connections were used for the 12 requests
    site.apps["es-2"].set_mode("error")
    bad = [f"http://127.0.0.1:{site.apps['es-2'].port}/warm"]
    outcome, _ = run_action(site, "cache_warmup", {}, warmup_urls=bad)
    assert outcome.status == "failed"


def test_traffic_command_puts_the_region_back(site: Site) -> None:
    outcome, _ = run_action(site, "shift_traffic", {"region": "primary"}, weight_steps=[0])
    assert outcome.status == "succeeded"
    assert server_states(site.lbs[0])["es-1"] == "DRAIN"
    command = [
        sys.executable,
        "-m",
        "tierwatch",
        "traffic",
        "enable",
        "--config",
        str(site.config),
        "--cluster",
        "web",
        "--region",
        "primary",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for lb in site.lbs:
        assert server_weights(lb)["es-1"] == 100 and server_weights(lb)["es-2"] == 100
        wait_for(lambda lb=lb: server_states(lb)["es-2"] == "UP", 10, "es-2 UP again")
    drain = [*command[:4], "drain", *command[5:7], "--cluster", "web", "--target", "es-3"]
    assert subprocess.run(drain, capture_output=True, text=True, timeout=60).returncode == 0
    assert server_states(site.lbs[1])["es-3"] == "DRAIN"
    unknown = [*command[:10], "nowhere"]  # --region nowhere
    assert subprocess.run(unknown, capture_output=True, text=True, timeout=60).returncode == 1
