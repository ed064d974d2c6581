"""The recovery service as a real process: authentication, validation, durable exactly-once inbox,
resolved alerts, cancellation, crash and restart, safety limits, dry run, and its own metrics."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.http import start_http_backend

from helpers import metric_value
from recovery_fixtures import (
    RESTART_LABELS,
    TOKEN,
    alert,
    app_cluster,
    kill_started_backends,
    launch,
    payload,
    restart_command,
    start_recovery,
)

ALLOW = {"AppInstanceDown": "restart_instance"}
LABELS = RESTART_LABELS


def restart_setup(stack: Stack, delay: float = 0.0, **recovery: object) -> tuple[object, Path, int]:
    port = free_port()
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    clusters = [app_cluster([("es-1", "primary", f"http://127.0.0.1:{port}/health")])]
    settings = {
        "allow": ALLOW,
        "action_timeout": "30s",
        "clusters": {"web": {"restart_commands": {"es-1": restart_command(marker, port, delay)}}},
        **recovery,
    }
    return start_recovery(stack, clusters, settings), marker, port


def now_rfc3339() -> str:
    """The current time as Alertmanager writes ``startsAt``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + 1))


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_unauthenticated_malformed_and_oversized_requests_change_nothing(stack: Stack) -> None:
    service, marker, _ = restart_setup(stack, max_body_bytes=4096)
    good = payload(alert("AppInstanceDown", LABELS))
    no_auth = service.post(good, token=None)
    assert no_auth.status_code == 401 and no_auth.headers["www-authenticate"].startswith("Bearer")
    assert service.post(good, token="wrong").status_code == 401
    basic = service.post(good, token=None, headers={"Authorization": "Basic " + TOKEN})
    assert basic.status_code == 401
    bad_json = service.post(b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    wrong_version = dict(good, version="3")
    invalid = service.post(wrong_version)
    assert invalid.status_code == 422 and "version" in invalid.json()["error"]
    missing_fingerprint = payload(
        {k: v for k, v in alert("AppInstanceDown", LABELS).items() if k != "fingerprint"}
    )
    assert service.post(missing_fingerprint).status_code == 422
    huge = payload(*[alert("AppInstanceDown", {**LABELS, "pad": "x" * 500, "n": str(i)}) for i in range(20)])
    assert service.post(huge).status_code == 413
    assert httpx.get(service.url + "/webhook").status_code == 405
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="unauthorized") == 3
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="invalid") == 3
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="too_large") == 1
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="accepted") == 0
    assert not service.events("action_started") and runs(marker) == 0
    assert (
        TOKEN not in service.log.read_text() and TOKEN not in (service.state_dir / "audit.jsonl").read_text()
    )
    service.stop()


def test_same_alert_from_two_senders_three_times_acts_once(stack: Stack) -> None:
    service, marker, port = restart_setup(stack)
    body = payload(alert("AppInstanceDown", LABELS))
    for sender in ("Alertmanager/0.25.0 peer-a", "Alertmanager/0.25.0 peer-b", "Alertmanager/0.25.0 peer-a"):
        response = service.post(body, headers={"User-Agent": sender})
        assert response.status_code == 200
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded", outcome
    assert runs(marker) == 1
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    assert len(service.events("alert_accepted")) == 1 and len(service.events("alert_duplicate")) == 2
    # again later, after the action finished: still a duplicate, still one run
    assert service.post(body).json() == {"status": "recorded", "duplicate": 1}
    metrics = httpx.get(service.url + "/metrics").text
    assert (
        metric_value(
            metrics,
            "tierwatch_recovery_actions_total",
            cluster="web",
            action="restart_instance",
            outcome="succeeded",
        )
        == 1
    )
    promtool = shutil.which("promtool")
    assert promtool
    check = subprocess.run(
        [promtool, "check", "metrics"], input=metrics, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr
    service.stop()


def test_resolved_never_acts_and_cancels_a_pending_action(stack: Stack) -> None:
    hanging = start_http_backend(stack, "hanging")
    hanging.set_mode("hang")  # the live check waits on it, so the action sits before its point of no return
    marker = stack.path("restart.marker")
    clusters = [app_cluster([("es-1", "primary", hanging.url)])]
    settings = {
        "allow": ALLOW,
        "clusters": {"web": {"restart_commands": {"es-1": restart_command(marker, free_port())}}},
    }
    service = start_recovery(stack, clusters, settings)
    resolved_only = payload(
        alert("AppInstanceDown", LABELS, status="resolved", starts_at="2026-11-26T20:00:00Z")
    )
    assert service.post(resolved_only).json() == {"status": "recorded", "ignored": 1}
    firing = alert("AppInstanceDown", LABELS)
    assert service.post(payload(firing)).status_code == 200
    wait_for(lambda: service.events("action_started"), 10, "action started")
    assert service.post(payload(dict(firing, status="resolved"))).status_code == 200
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "cancelled"
    assert not service.events("point_of_no_return") and runs(marker) == 0
    service.stop()


def test_killed_mid_action_neither_loses_nor_repeats(stack: Stack) -> None:
    # the restart command takes 3 s after recording its run: the service is killed inside that window,
    # past the point of no return; after the restart it verifies instead of running the command again
    service, marker, port = restart_setup(stack, delay=3.0)
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 200
    wait_for(lambda: runs(marker) == 1, 15, "restart command started")
    assert service.events("point_of_no_return")
    service.kill()
    restarted = launch(stack, service.config, service.state_dir, "recover-again")
    [outcome] = restarted.wait_outcome(timeout=30)
    assert outcome["outcome"] == "succeeded", outcome
    assert runs(marker) == 1
    assert restarted.events("alert_resumed") and restarted.events("resumed_verify_only")
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    # the run past its point of no return still counts: a new occurrence is in the default cooldown
    again = alert("AppInstanceDown", LABELS, starts_at=now_rfc3339())
    assert restarted.post(payload(again)).json() == {"status": "recorded", "accepted": 1}
    wait_for(lambda: restarted.events("blocked"), 10, "the new occurrence blocked")
    assert [b["limit"] for b in restarted.events("blocked")] == ["cooldown"]
    assert runs(marker) == 1
    restarted.stop()


def test_killed_before_the_point_of_no_return_runs_after_restart(stack: Stack) -> None:
    hanging = start_http_backend(stack, "es-1-hanging")
    hanging.set_mode("hang")
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    clusters = [app_cluster([("es-1", "primary", hanging.url)])]
    # the restart command brings a fresh backend up on the hanging one's port
    settings = {
        "allow": ALLOW,
        "clusters": {"web": {"restart_commands": {"es-1": restart_command(marker, hanging.port)}}},
    }
    service = start_recovery(stack, clusters, settings)
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 200
    wait_for(lambda: service.events("action_started"), 10, "action started")
    service.kill()  # during the live check (the target hangs), before anything irreversible
    assert not service.events("point_of_no_return")
    hanging.process.stop()  # now the target is plainly down
    restarted = launch(stack, service.config, service.state_dir, "recover-again")
    [outcome] = restarted.wait_outcome(timeout=30)
    assert outcome["outcome"] == "succeeded", outcome
    assert runs(marker) == 1
    assert not restarted.events("alert_resumed")  # it was put back as pending, and ran from the start
    restarted.stop()


def test_allow_list_and_the_default_cooldown(stack: Stack) -> None:
    service, marker, _ = restart_setup(stack)  # default cooldown (10 m) and rate limit (3 per hour)
    not_allowed = alert("AppLatencyHigh", {**LABELS, "action": "restart_instance"})
    wrong_action = alert("AppInstanceDown", {**LABELS, "action": "pg_promote"})
    service.post(payload(not_allowed, wrong_action))
    wait_for(lambda: len(service.events("blocked")) == 2, 10, "two blocked")
    assert {b["limit"] for b in service.events("blocked")} == {"not_allowed"}
    service.post(payload(alert("AppInstanceDown", LABELS)))
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded", outcome
    # a new occurrence: it starts firing after the first one was handled (an earlier start would make
    # it another copy of the same incident, see test_recovery_hardening)
    again = alert("AppInstanceDown", LABELS, starts_at=now_rfc3339())
    service.post(payload(again))
    wait_for(lambda: any(b["limit"] == "cooldown" for b in service.events("blocked")), 10, "cooldown")
    assert runs(marker) == 1
    metrics = httpx.get(service.url + "/metrics").text
    assert (
        metric_value(metrics, "tierwatch_recovery_blocked_total", limit="cooldown", action="restart_instance")
        == 1
    )
    assert metric_value(metrics, "tierwatch_recovery_blocked_total", limit="rate_limit") == 0
    assert metric_value(metrics, "tierwatch_recovery_blocked_total", limit="not_allowed") == 1
    service.stop()


def age_runs(state_dir: Path, seconds: float) -> None:
    """Move every recorded run ``seconds`` into the past, as that much time passing would (the service
    reads the runs from its inbox at each check, so it sees the change at once)."""
    db = sqlite3.connect(state_dir / "inbox.sqlite3", timeout=10)
    try:
        with db:
            # on both clocks the windows read (inbox.py): the wall clock and the time since boot
            db.execute(
                "UPDATE runs SET started_at = started_at - ?, since_boot = since_boot - ?", (seconds, seconds)
            )
    finally:
        db.close()


def test_rate_limit_counts_every_action_of_a_cluster(stack: Stack) -> None:
    """Default limits: the cooldown (10 m) is per cluster and action, the rate limit (3 per hour) per
    cluster. Four instances of one cluster go down 11 minutes apart: three restarts, each out of the
    previous one's cooldown; the fourth is refused by the rate limit alone."""
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    ports = {f"es-{n}": free_port() for n in range(1, 5)}
    clusters = [app_cluster([(n, "primary", f"http://127.0.0.1:{p}/health") for n, p in ports.items()])]
    commands = {n: restart_command(marker, p) for n, p in ports.items()}
    settings = {"allow": ALLOW, "clusters": {"web": {"restart_commands": commands}}}
    service = start_recovery(stack, clusters, settings)
    for n in range(1, 4):
        labels = {**LABELS, "target": f"es-{n}"}
        service.post(payload(alert("AppInstanceDown", labels)))
        outcomes = service.wait_outcome(n)
        assert [o["outcome"] for o in outcomes] == ["succeeded"] * n, outcomes
        age_runs(service.state_dir, 11 * 60)  # 11 minutes pass: out of the cooldown, within the hour
    service.post(payload(alert("AppInstanceDown", {**LABELS, "target": "es-4"})))
    wait_for(lambda: service.events("blocked"), 10, "the fourth alert blocked")
    assert [b["limit"] for b in service.events("blocked")] == ["rate_limit"]
    assert [b["target"] for b in service.events("blocked")] == ["es-4"]
    assert runs(marker) == 3
    metrics = httpx.get(service.url + "/metrics").text
    blocked = "tierwatch_recovery_blocked_total"
    assert metric_value(metrics, blocked, action="restart_instance", limit="rate_limit") == 1
    assert metric_value(metrics, blocked, action="restart_instance", limit="cooldown") == 0
    service.stop()


def test_dry_run_decides_but_changes_nothing(stack: Stack) -> None:
    service, marker, _port = restart_setup(stack, dry_run=True)
    service.post(payload(alert("AppInstanceDown", LABELS)))
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "dry_run" and "would run" in outcome["detail"]
    assert runs(marker) == 0
    service.stop()


def test_refuses_when_the_instance_answers(stack: Stack) -> None:
    alive = start_http_backend(stack, "es-1")
    marker = stack.path("restart.marker")
    clusters = [app_cluster([("es-1", "primary", alive.url)])]
    settings = {
        "allow": ALLOW,
        "clusters": {"web": {"restart_commands": {"es-1": restart_command(marker, 1)}}},
    }
    service = start_recovery(stack, clusters, settings)
    service.post(payload(alert("AppInstanceDown", LABELS)))
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "refused" and "answers" in outcome["detail"]
    assert runs(marker) == 0
    service.stop()


def test_audit_endpoint_requires_auth(stack: Stack) -> None:
    service, _, _ = restart_setup(stack)
    assert httpx.get(service.url + "/audit").status_code == 401
    entries = httpx.get(service.url + "/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert isinstance(entries, list)
    service.stop()


def test_action_series_exist_at_zero_from_the_start(stack: Stack) -> None:
    service, _, _ = restart_setup(stack)
    metrics = httpx.get(service.url + "/metrics").text
    for outcome in ("succeeded", "failed", "refused", "cancelled", "timed_out", "dry_run"):
        assert (
            metric_value(
                metrics,
                "tierwatch_recovery_actions_total",
                cluster="web",
                tier="app",
                action="restart_instance",
                outcome=outcome,
            )
            == 0
        ), outcome
    for limit in ("rate_limit", "cooldown", "max_lag", "not_allowed"):
        assert (
            metric_value(
                metrics,
                "tierwatch_recovery_blocked_total",
                cluster="web",
                action="restart_instance",
                limit=limit,
            )
            == 0
        ), limit
    service.stop()
