"""alertmanager/alertmanager.yml: amtool accepts it, every alert in rules/ routes to the receivers its
labels call for, and the inhibitions work in a real Alertmanager."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.alertmanager import rewrite_for_test, start_alertmanager

from webhook_sink import Sink, webhook_sink

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
SEVERITY_RECEIVER = {"critical": "pager", "warning": "tickets", "info": "chat"}


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("amtool")
    assert tool, "amtool (Debian package prometheus-alertmanager) is required"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def rule_alerts() -> list[dict[str, Any]]:
    alerts = []
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            alerts += [rule for rule in group["rules"] if "alert" in rule]
    return alerts


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def expected_receivers(labels: dict[str, str]) -> list[str]:
    if labels["alertname"] == "Watchdog":
        return ["deadmans-switch"]
    people = SEVERITY_RECEIVER[labels["severity"]]
    return ["recovery", people] if labels.get("action") else [people]


def test_every_alert_routes_to_its_receivers() -> None:
    alerts = rule_alerts()
    assert len(alerts) >= 40, "rules/ should hold the kit's alerts"
    for rule in alerts:
        labels = {
            "alertname": rule["alert"],
            "cluster": "c1",
            "target": "t1",
            "region": "primary",
            **{k: str(v) for k, v in rule.get("labels", {}).items()},
        }
        result = amtool(
            "config", "routes", "test", f"--config.file={CONFIG}", *(f"{k}={v}" for k, v in labels.items())
        )
        assert result.returncode == 0, result.stderr
        got = result.stdout.strip().split(",")
        assert got == expected_receivers(labels), f"{rule['alert']}: {got}"


def test_recovery_route_is_fast_and_sends_resolved() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    [route] = [r for r in config["route"]["routes"] if r["receiver"] == "recovery"]
    assert route["group_wait"] == "0s" and route["continue"] is True
    [receiver] = [r for r in config["receivers"] if r["name"] == "recovery"]
    webhook = receiver["webhook_configs"][0]
    assert webhook["send_resolved"] is True
    assert "credentials_file" in webhook["http_config"]["authorization"]


def labels_in_unit_tests() -> dict[str, set[str]]:
    """Per alert, the labels its firing instances carry in the promtool unit tests (rules/tests)."""
    carried: dict[str, set[str]] = {}
    for path in sorted((ROOT / "rules" / "tests").glob("*.yml")):
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts", []):
                    carried.setdefault(case["alertname"], set()).update(alert.get("exp_labels", {}))
    return carried


def test_inhibition_equal_labels_are_carried_by_the_alerts() -> None:
    """Every `equal` label of an inhibition is a label the source and target alerts really carry,
    as their promtool unit tests show; otherwise the inhibition silently never matches."""
    config = yaml.safe_load(CONFIG.read_text())
    carried = labels_in_unit_tests()
    for inhibit in config["inhibit_rules"]:
        for side in ("source_matchers", "target_matchers"):
            for matcher in inhibit[side]:
                if not matcher.startswith("alertname"):
                    continue
                for name in matcher.split('"')[1].split("|"):
                    assert name in carried, f"inhibition names {name}, which no unit test fires"
                    missing = set(inhibit["equal"]) - carried[name]
                    assert not missing, (
                        f"{name} does not carry {missing} (inhibition equal {inhibit['equal']})"
                    )


def fire(name: str, **labels: str) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": name},
        "startsAt": now.isoformat(),
        "endsAt": (now + dt.timedelta(minutes=5)).isoformat(),
    }


def firing_now(alert: dict[str, Any]) -> dict[str, Any]:
    """``alert`` (made when the tests were collected, maybe minutes ago) firing from now on: an
    ``endsAt`` in the past would reach Alertmanager already resolved."""
    return fire(
        alert["labels"]["alertname"], **{k: v for k, v in alert["labels"].items() if k != "alertname"}
    )


@pytest.mark.parametrize(
    ("source", "target", "muted"),
    [
        (
            fire("AppRegionDown", cluster="web", region="primary", severity="critical", tier="app"),
            fire(
                "AppInstanceDown",
                cluster="web",
                region="primary",
                target="es-1",
                severity="critical",
                tier="app",
            ),
            True,
        ),
        (
            fire("AppRegionDown", cluster="web", region="primary", severity="critical", tier="app"),
            fire(
                "AppInstanceDown",
                cluster="web",
                region="failover",
                target="es-3",
                severity="critical",
                tier="app",
            ),
            False,
        ),
        (
            fire(
                "PostgresPrimaryDown",
                cluster="main-db",
                target="pg-1",
                region="primary",
                severity="critical",
                tier="postgres",
            ),
            fire(
                "PostgresReplicationLagHigh",
                cluster="main-db",
                target="pg-2",
                region="primary",
                severity="warning",
                tier="postgres",
            ),
            True,
        ),
        (
            fire(
                "PostgresPrimaryDown",
                cluster="main-db",
                target="pg-1",
                region="primary",
                severity="critical",
                tier="postgres",
            ),
            fire(
                "PostgresReplicationLagHigh",
                cluster="other-db",
                target="pg-9",
                region="primary",
                severity="warning",
                tier="postgres",
            ),
            False,
        ),
        (
            fire(
                "RedisMasterDown",
                cluster="cache-main",
                target="redis-a",
                region="primary",
                severity="critical",
                tier="redis",
            ),
            fire(
                "RedisReplicationLagHigh",
                cluster="cache-main",
                target="redis-b",
                region="primary",
                severity="warning",
                tier="redis",
            ),
            True,
        ),
        (  # the primary region lost: the backup replica's link to the dead master follows from it
            fire(
                "RedisPrimaryRegionDown",
                cluster="cache-main",
                target="redis-a",
                region="primary",
                severity="critical",
                tier="redis",
                action="redis_failover",
            ),
            fire(
                "RedisReplicaLinkDown",
                cluster="cache-main",
                target="redis-d",
                region="failover",
                severity="warning",
                tier="redis",
            ),
            True,
        ),
        (
            fire(
                "RedisMemoryNearMax",
                cluster="cache-main",
                target="redis-a",
                severity="critical",
                tier="redis",
            ),
            fire(
                "RedisMemoryNearMax", cluster="cache-main", target="redis-a", severity="warning", tier="redis"
            ),
            True,
        ),
        (
            fire(
                "RedisMemoryNearMax",
                cluster="cache-main",
                target="redis-a",
                severity="critical",
                tier="redis",
            ),
            fire("RedisEvictions", cluster="cache-main", target="redis-a", severity="warning", tier="redis"),
            False,
        ),
    ],
)
@pytest.mark.slow
def test_inhibitions_in_a_real_alertmanager(
    stack: Stack, source: dict[str, Any], target: dict[str, Any], muted: bool
) -> None:
    manager = start_alertmanager(
        stack, rewrite_for_test(CONFIG.read_text(), stack.path("secrets", "x").parent)
    )
    source, target = firing_now(source), firing_now(target)
    manager.post_alerts([source, target])

    def status_of_target() -> dict[str, Any] | None:
        for entry in manager.alerts():
            if entry["labels"] == target["labels"]:
                return entry["status"]
        return None

    status = wait_for(status_of_target, 10, "alert registered")
    if muted:
        status = wait_for(
            lambda: (s := status_of_target()) and s["state"] == "suppressed" and s, 10, "inhibited"
        )
        assert status["inhibitedBy"], status
    else:
        assert status["state"] == "active" and not status["inhibitedBy"], status


# ---- both LBs down: people hear it once, the recovery service still gets its restarts ----


@pytest.fixture
def sink() -> Iterator[Sink]:
    with webhook_sink() as box:
        yield box


def fast_config(sink: Sink, secrets: Path) -> str:
    """alertmanager.yml with every group_wait at 1s and the webhook receivers pointed at the sink."""
    config = yaml.safe_load(CONFIG.read_text())

    def fast(route: dict[str, Any]) -> None:
        route["group_wait"] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(config["route"])
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if receiver["name"] != "recovery":  # rewrite_for_test points the recovery hook at the sink
                hook["url"] = f"http://127.0.0.1:{sink.port}/{receiver['name']}"
    return rewrite_for_test(yaml.safe_dump(config), secrets, f"http://127.0.0.1:{sink.port}/recovery")


def test_both_lbs_down_still_reach_the_recovery_service(stack: Stack, sink: Sink) -> None:
    """LBBothDown mutes LBVipNotServed, but the restart_instance alerts of both LBs reach the recovery
    webhook (an inhibited alert reaches no receiver at all), and the pager hears of the pair once."""
    lb = {"tier": "lb", "cluster": "edge"}
    both = fire("LBBothDown", severity="critical", **lb)
    vip = fire("LBVipNotServed", severity="critical", **lb)
    active = fire(
        "LBActiveDown", target="lb-1", region="primary", severity="critical", action="restart_instance", **lb
    )
    standby = fire(
        "LBStandbyDown", target="lb-2", region="primary", severity="warning", action="restart_instance", **lb
    )
    manager = start_alertmanager(stack, fast_config(sink, stack.path("secrets", "x").parent))
    manager.post_alerts([both, vip, active, standby])

    def recovered() -> set[str]:
        return {
            a["labels"]["alertname"]
            for body in sink.bodies("/recovery")
            for a in body["alerts"]
            if a["status"] == "firing"
        }

    wait_for(lambda: recovered() >= {"LBActiveDown", "LBStandbyDown"}, 15, "restarts sent to recovery")
    assert all(a["labels"].get("action") for body in sink.bodies("/recovery") for a in body["alerts"])
    state = {e["labels"]["alertname"]: e["status"]["state"] for e in manager.alerts()}
    assert state["LBVipNotServed"] == "suppressed", state
    pages = wait_for(lambda: sink.bodies("/pager"), 15, "the pair paged")
    assert len(pages) == 1, pages
    assert {a["labels"]["alertname"] for a in pages[0]["alerts"]} == {"LBBothDown", "LBActiveDown"}
