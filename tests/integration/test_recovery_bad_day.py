"""Issue 21: the real ``tierwatch recover`` on a bad day, with its DEFAULT cooldown and rate limit: a
full disk under a service that has already acted, a rotated or deleted audit log, a rejoin after its
failover's records were rotated away, forged fingerprints and an authenticated flood of bad bodies."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch.config import load_config
from tierwatch.recovery.inbox import Inbox, InboxUnavailable
from tierwatch.recovery.service import RecoveryService
from tierwatch.recovery.webhook import parse_payload
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.redis import start_redis

from helpers import metric_value
from recovery_fixtures import (
    RESTART_LABELS,
    TOKEN,
    RecoveryProcess,
    alert,
    kill_started_backends,
    payload,
    restart_command,
    start_recovery,
)


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def two_app_clusters(stack: Stack, state_dir: Path | None = None) -> tuple[RecoveryProcess, Path]:
    """Clusters web-a and web-b, one instance each, both down; a restart brings one up and records
    its run in the marker (two clusters: the default cooldown is per cluster and action)."""
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    clusters, commands = [], {}
    for name in ("web-a", "web-b"):
        port = free_port()
        target = f"{name}-1"
        url = f"http://127.0.0.1:{port}/health"
        clusters.append(
            {"name": name, "tier": "app", "targets": [{"name": target, "region": "primary", "url": url}]}
        )
        commands[name] = {"restart_commands": {target: restart_command(marker, port)}}
    settings = {"allow": {"AppInstanceDown": "restart_instance"}, "clusters": commands}
    return start_recovery(stack, clusters, settings, state_dir=state_dir), marker


def down(cluster: str, starts_at: str = "2026-11-26T21:00:00Z") -> dict[str, Any]:
    labels = {**RESTART_LABELS, "cluster": cluster, "target": f"{cluster}-1"}
    return payload(alert("AppInstanceDown", labels, starts_at=starts_at))


def metrics(service: RecoveryProcess) -> str:
    return httpx.get(service.url + "/metrics", timeout=5).text


def lines_all_json(path: Path) -> list[dict[str, Any]]:
    """Every line of the trail, each a complete JSON record (fails on a half-written one)."""
    return [json.loads(line) for line in path.read_bytes().decode().splitlines()]


# --- a full disk -----------------------------------------------------------------------------------


@pytest.fixture
def small_disk(stack: Stack) -> Path:
    """A 16 MiB tmpfs this test owns (root only, as in CI), unmounted on every path."""
    where = stack.directory("small-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tw-audit", str(where)], check=True)
    stack.on_close(lambda: subprocess.run(["umount", "-l", str(where)], check=False))
    return where


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (64 * 1024, 4096, 512, 64, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_disk_refuses_webhooks_and_actions_until_space_returns(stack: Stack, small_disk: Path) -> None:
    service, marker = two_app_clusters(stack, state_dir=small_disk / "state")
    assert service.post(down("web-a")).status_code == 200
    [first] = service.wait_outcome()
    assert first["outcome"] == "succeeded" and runs(marker) == 1

    filler = fill(small_disk)
    refused = service.post(down("web-b"), timeout=30)
    assert refused.status_code == 503, refused.text  # Alertmanager retries a 5xx
    assert refused.elapsed.total_seconds() < 5  # no stall: the failure is known at once
    ready = wait_for(
        lambda: (r := httpx.get(service.url + "/ready", timeout=5)).status_code == 503 and r, 5, "not ready"
    )
    # the inbox's write or the audit's, whichever the full disk refused first
    assert "not writable (SQLITE_FULL)" in ready.text or "(ENOSPC)" in ready.text, ready.text
    text = metrics(service)
    writable = [metric_value(text, "tierwatch_recovery_state_writable", store=s) for s in ("audit", "inbox")]
    assert 0 in writable, writable
    assert metric_value(text, "tierwatch_recovery_notifications_total", result="unavailable") >= 1
    again = service.post(down("web-b"), timeout=30)
    assert again.status_code == 503 and again.elapsed.total_seconds() < 1
    assert runs(marker) == 1  # nothing ran without its record

    filler.unlink()
    wait_for(lambda: httpx.get(service.url + "/ready", timeout=5).status_code == 200, 15, "ready again")
    text = metrics(service)
    assert [metric_value(text, "tierwatch_recovery_state_writable", store=s) for s in ("audit", "inbox")] == [
        1,
        1,
    ]
    accepted = service.post(down("web-b"))  # Alertmanager's retry
    assert accepted.status_code == 200, accepted.text
    outcomes = service.wait_outcome(2)
    assert [o["outcome"] for o in outcomes] == ["succeeded", "succeeded"], outcomes
    assert runs(marker) == 2
    trail = lines_all_json(service.state_dir / "audit.jsonl")
    assert [e["cluster"] for e in trail if e["event"] == "action_started"] == ["web-a", "web-b"]
    service.stop()
    log = service.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    said = [line for line in log.splitlines() if "_unwritable" in line]
    assert 1 <= len(said) <= 2, said  # once per store that failed, not once per attempt


def test_a_full_disk_on_a_fresh_state_directory_answers_503_without_a_traceback(
    stack: Stack, small_disk: Path
) -> None:
    service, marker = two_app_clusters(stack, state_dir=small_disk / "state")
    filler = fill(small_disk)
    for _ in range(3):
        response = service.post(down("web-a"), timeout=30)
        assert response.status_code == 503, response.text
    filler.unlink()
    wait_for(lambda: service.post(down("web-a")).status_code == 200, 15, "accepted once space returns")
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded" and runs(marker) == 1
    service.stop()
    assert "Traceback" not in service.log.read_text(), service.log.read_text()[-3000:]


# --- rotation and deletion ---------------------------------------------------------------------------


def audit_endpoint(service: RecoveryProcess) -> httpx.Response:
    return httpx.get(service.url + "/audit", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)


def test_a_rotated_then_deleted_audit_log_keeps_every_later_record(stack: Stack) -> None:
    service, marker = two_app_clusters(stack)
    path = service.state_dir / "audit.jsonl"
    assert service.post(down("web-a")).status_code == 200
    service.wait_outcome()
    # the restart's facts (its duration) follow its outcome: rotating before they are on disk would put
    # a web-a record in the new file (seen under a loaded CI run)
    wait_for(lambda: service.events("facts"), 15, "web-a's facts")
    # logrotate's default (create): rename, create anew, then the postrotate SIGHUP
    path.rename(path.with_name("audit.jsonl.1"))
    path.touch()
    service.proc.send_signal(signal.SIGHUP)
    assert service.post(down("web-b")).status_code == 200
    wait_for(
        lambda: [e for e in lines_all_json(path) if e["event"] == "outcome"], 15, "outcome in the new file"
    )
    entries = audit_endpoint(service).json()
    assert any(e["event"] == "outcome" and e["cluster"] == "web-b" for e in entries), entries
    assert not any(e.get("cluster") == "web-a" for e in entries)  # those stay in audit.jsonl.1

    path.unlink()  # deleted, no SIGHUP
    response = audit_endpoint(service)
    assert response.status_code == 200 and response.json() == []
    late = down("web-b", starts_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5)))
    assert service.post(late).json() == {"status": "recorded", "accepted": 1}
    blocked = wait_for(
        lambda: path.exists() and [e for e in lines_all_json(path) if e["event"] == "blocked"],
        15,
        "recreated",
    )
    assert blocked[0]["limit"] == "cooldown"  # web-b's default cooldown, audited in the new file
    assert any(e["event"] == "blocked" for e in audit_endpoint(service).json())
    assert runs(marker) == 2
    service.stop()


def test_a_rejoin_finds_its_failover_after_the_audit_log_was_rotated_away(stack: Stack) -> None:
    master = start_redis(stack, "redis-1")
    replicas = [start_redis(stack, n, replica_of=master) for n in ("redis-2", "redis-3")]
    cluster = {
        "name": "cache-main",
        "tier": "redis",
        "targets": [{"name": s.name, "region": "main", "url": s.url} for s in (master, *replicas)],
    }
    allow = {"RedisMasterDown": "redis_failover", "RedisSplitBrain": "redis_rejoin"}
    service = start_recovery(stack, [cluster], {"allow": allow})
    labels = {"tier": "redis", "cluster": "cache-main", "region": "main"}
    master.process.kill()
    failover = payload(alert("RedisMasterDown", {**labels, "target": "redis-1", "action": "redis_failover"}))
    assert service.post(failover).status_code == 200
    [outcome] = service.wait_outcome(timeout=40)
    assert outcome["outcome"] == "succeeded", service.audit()
    path = service.state_dir / "audit.jsonl"
    path.rename(path.with_name("audit.jsonl.1"))  # rotated; then deleted outright
    path.with_name("audit.jsonl.1").unlink()
    service.proc.send_signal(signal.SIGHUP)

    master.process.start()
    wait_for(lambda: master.info("replication")["role"] == "master", 15, "redis-1 back as a master")
    split = payload(alert("RedisSplitBrain", {**labels, "action": "redis_rejoin"}))
    assert service.post(split).status_code == 200
    [rejoin] = service.wait_outcome(timeout=40)
    assert rejoin["outcome"] == "succeeded", service.audit()
    wait_for(lambda: master.info("replication")["role"] == "slave", 15, "redis-1 a replica again")
    service.stop()


# --- forged fingerprints and authenticated floods -------------------------------------------------------


def test_two_alerts_with_one_fingerprint_and_different_labels_are_refused(stack: Stack) -> None:
    service, marker = two_app_clusters(stack)
    real = down("web-a")["alerts"][0]
    forged = json.loads(json.dumps(down("web-b")["alerts"][0]))
    forged["fingerprint"] = real["fingerprint"]  # claims to be web-a's alert
    response = service.post(payload(real, forged))
    assert response.status_code == 422 and "alerts.1.fingerprint" in response.text, response.text
    assert service.post(payload(forged)).status_code == 422
    assert service.post(payload(real)).json() == {"status": "recorded", "accepted": 1}
    service.wait_outcome()
    assert runs(marker) == 1 and [e["cluster"] for e in service.events("action_started")] == ["web-a"]
    service.stop()


def test_an_authenticated_flood_of_bad_bodies_is_counted_not_written(stack: Stack) -> None:
    service, _ = two_app_clusters(stack)
    path = service.state_dir / "audit.jsonl"
    before = path.stat().st_size
    forged = down("web-a")
    forged["alerts"][0]["fingerprint"] = "0000000000000000"
    bodies = [b"{not json", json.dumps(forged).encode(), b"x" * (2 << 20)]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10) as client:
        for n in range(300):
            response = client.post(service.url + "/webhook", content=bodies[n % 3], headers=headers)
            assert response.status_code in (400, 413, 422), response.status_code
    text = metrics(service)
    assert metric_value(text, "tierwatch_recovery_notifications_total", result="invalid") == 200
    assert metric_value(text, "tierwatch_recovery_notifications_total", result="too_large") == 100
    wait_for(lambda: path.stat().st_size > before, 5, "the first refusals audited")
    rejected = service.events("notification_rejected")
    assert 2 <= len(rejected) <= 6, rejected
    assert path.stat().st_size - before < 4096
    service.stop()
    held_back = sum(e["suppressed_since_last"] for e in service.events("notification_rejected"))
    assert held_back + len(rejected) == 300  # the counts held back are written on stop
    assert os.path.getsize(path) > before


def test_an_outcome_the_inbox_refuses_past_the_point_of_no_return_is_resumed_not_rerun(stack: Stack) -> None:
    """In-process, the inbox refusing the outcome's write (as a full disk does; a tmpfs filled under the
    real process kept taking this small write in its slack): the restart ran past its point of no
    return, so the alert stays running there, audited as outcome_not_recorded (not 'deferred', which
    says nothing was done), and the next start resumes it verify-only."""
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    port = free_port()
    token_file = stack.path("secrets", "token")
    token_file.write_text(TOKEN + "\n")
    state = stack.directory("state-inproc")
    target = {"name": "web-a-1", "region": "primary", "url": f"http://127.0.0.1:{port}/health"}
    recovery = {
        "state_dir": str(state),
        "auth": {"bearer_token_file": str(token_file)},
        "allow": {"AppInstanceDown": "restart_instance"},
        "clusters": {"web-a": {"restart_commands": {"web-a-1": restart_command(marker, port)}}},
    }
    config = stack.path("inproc.yml")
    cluster = {"name": "web-a", "tier": "app", "targets": [target]}
    config.write_text(yaml.safe_dump({"clusters": [cluster], "recovery": recovery}))
    loaded = load_config(config)
    assert loaded.config.recovery is not None

    async def scenario() -> tuple[list[str], str | None]:
        service = RecoveryService(loaded, loaded.config.recovery)  # type: ignore[arg-type]
        try:

            def refuse(*_args: Any) -> None:
                raise InboxUnavailable("inbox not writable (SQLITE_FULL)")

            service.inbox.finish = refuse  # type: ignore[method-assign]
            service.inbox.record(parse_payload(json.dumps(down("web-a")).encode()))
            claimed = service.inbox.claim_next()
            assert claimed is not None
            await asyncio.wait([service.worker.start(claimed, resumed=False)], timeout=30)
            await service.audit.flush()
            stored = service.inbox.get(claimed.key)
            return [e["event"] for e in service.audit.read()], (stored.state if stored else None)
        finally:
            service.close()

    events, stored = asyncio.run(scenario())
    assert "point_of_no_return" in events and "outcome_not_recorded" in events, events
    assert "action_deferred" not in events and stored == "running", (events, stored)
    assert runs(marker) == 1
    reopened = Inbox(state / "inbox.sqlite3")
    [resumed] = reopened.interrupted()  # what the next start resumes, verify-only
    assert resumed.past_ponr
    reopened.close()
