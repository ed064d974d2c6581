"""Issue 11: the recovery service against crashes, concurrency and hostile webhooks, as a real process
with its DEFAULT cooldown (10 m) and rate limit (3 per hour) unless a test says otherwise."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.redis import RedisServer, start_redis

from helpers import metric_value
from recovery_fixtures import (
    RESTART_LABELS,
    TOKEN,
    RecoveryProcess,
    alert,
    app_cluster,
    kill_started_backends,
    launch,
    payload,
    restart_command,
    start_recovery,
)

LABELS = RESTART_LABELS
# regional_failover allowed, as in examples/recovery.yml: restart_instance then waits `settle` first
ALLOW = {"AppInstanceDown": "restart_instance", "AppRegionDown": "regional_failover"}


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def app_setup(
    stack: Stack, names: tuple[str, ...] = ("es-1",), **recovery: Any
) -> tuple[RecoveryProcess, Path]:
    """An app cluster whose targets are all down; each restart command records its run in one marker
    file and brings its target up."""
    marker = stack.path("restart.marker")
    stack.on_close(lambda: kill_started_backends(marker))
    ports = {name: free_port() for name in names}
    clusters = [app_cluster([(n, "primary", f"http://127.0.0.1:{p}/health") for n, p in ports.items()])]
    commands = {n: restart_command(marker, p) for n, p in ports.items()}
    settings = {"allow": ALLOW, "clusters": {"web": {"restart_commands": commands}}, **recovery}
    return start_recovery(stack, clusters, settings), marker


def drained(service: RecoveryProcess, timeout: float = 30) -> None:
    """Wait until every recorded alert has finished."""

    def empty() -> bool:
        text = httpx.get(service.url + "/metrics", timeout=5).text
        return metric_value(text, "tierwatch_recovery_inbox_pending") == 0

    wait_for(empty, timeout, "inbox drained")


# --- 1 and 2: kill -9 / SIGTERM before the point of no return, real Redis, default limits ----------


def redis_trio(stack: Stack) -> list[RedisServer]:
    master = start_redis(stack, "redis-1")
    return [master, *(start_redis(stack, n, replica_of=master) for n in ("redis-2", "redis-3"))]


def redis_recovery(stack: Stack, servers: list[RedisServer]) -> RecoveryProcess:
    cluster = {
        "name": "cache-main",
        "tier": "redis",
        "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in servers],
    }
    return start_recovery(stack, [cluster], {"allow": {"RedisMasterDown": "redis_failover"}})


def master_down_alert() -> dict[str, Any]:
    labels = {"tier": "redis", "cluster": "cache-main", "target": "redis-1", "action": "redis_failover"}
    return payload(alert("RedisMasterDown", labels))


def promoted(replicas: list[RedisServer]) -> list[str]:
    names = []
    for replica in replicas:
        try:
            if replica.client(socket_timeout=1).info("replication")["role"] == "master":
                names.append(replica.name)
        except redis.RedisError:
            pass
    return names


def interrupt_before_the_point_of_no_return(stack: Stack, how: str) -> None:
    servers = redis_trio(stack)
    master, replicas = servers[0], servers[1:]
    service = redis_recovery(stack, servers)
    master.process.pause()  # it hangs: the live check waits out its timeouts
    assert service.post(master_down_alert()).status_code == 200
    wait_for(lambda: service.events("action_started"), 10, "action started")
    if how == "kill":
        service.kill()
    else:
        started = time.monotonic()
        service.proc.terminate()
        assert service.proc.wait(15) == 0
        assert time.monotonic() - started < 10
        # a shutdown is not a resolution: no outcome is recorded for the interrupted alert
        assert not service.events("outcome"), service.events("outcome")
    assert not service.events("point_of_no_return")
    master.process.kill()
    restarted = launch(stack, service.config, service.state_dir, "recover-again")
    [outcome] = restarted.wait_outcome(timeout=40)
    assert outcome["outcome"] == "succeeded", outcome
    assert len(promoted(replicas)) == 1
    restarted.stop()


def test_kill_9_before_the_point_of_no_return_still_fails_over(stack: Stack) -> None:
    interrupt_before_the_point_of_no_return(stack, "kill")


def test_sigterm_before_the_point_of_no_return_runs_again_after_restart(stack: Stack) -> None:
    interrupt_before_the_point_of_no_return(stack, "term")


# --- 3: concurrent alerts cannot bypass cooldown and rate limit -----------------------------------


def test_alerts_differing_only_by_replica_label_are_one_incident(stack: Stack) -> None:
    service, marker = app_setup(stack)
    pair = [alert("AppInstanceDown", {**LABELS, "replica": r}) for r in ("prom-a", "prom-b")]
    assert service.post(payload(*pair)).json() == {"status": "recorded", "accepted": 1, "duplicate": 1}
    more = [
        alert(
            "AppInstanceDown",
            {**LABELS, "prometheus": "ha", "replica": f"r{i}"},
        )
        for i in range(8)
    ]
    for one in more:
        assert service.post(payload(one)).status_code == 200
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded", outcome
    drained(service)
    assert runs(marker) == 1
    service.stop()


def test_a_replica_copy_arriving_after_the_incident_was_handled_is_still_the_same_incident(
    stack: Stack,
) -> None:
    """The second Prometheus of a pair starts firing a little later, so Alertmanager sends its copy one
    group_interval after the first: by then the first copy's action is done. Still one incident; an
    occurrence that starts firing after that action finished is a new one."""
    service, marker = app_setup(stack)
    first = alert("AppInstanceDown", {**LABELS, "replica": "a"})
    assert service.post(payload(first)).json() == {"status": "recorded", "accepted": 1}
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded", outcome
    late = alert(
        "AppInstanceDown", {**LABELS, "replica": "b"},
        starts_at="2026-11-26T21:00:01.5Z",
    )  # fmt: skip
    assert service.post(payload(late)).json() == {"status": "recorded", "duplicate": 1}
    for one in (first, late):
        assert service.post(payload(dict(one, status="resolved"))).status_code == 200
    later = time.strftime("%Y-%m-%dT%H:%M:%S.000000001Z", time.gmtime(time.time() + 5))
    again = alert("AppInstanceDown", {**LABELS, "replica": "b"}, starts_at=later)
    assert service.post(payload(again)).json() == {"status": "recorded", "accepted": 1}
    drained(service)
    assert runs(marker) == 1  # the new occurrence is in the default cooldown
    service.stop()


def test_concurrent_alerts_cannot_pass_the_cooldown_together(stack: Stack) -> None:
    # two different instances of one cluster, both down: cooldown is per cluster and action
    service, marker = app_setup(stack, ("es-1", "es-2"))
    first = alert("AppInstanceDown", LABELS)
    second = alert("AppInstanceDown", {**LABELS, "target": "es-2"})
    assert service.post(payload(first, second)).json() == {"status": "recorded", "accepted": 2}
    wait_for(lambda: service.events("blocked"), 20, "the second alert blocked")
    drained(service)
    assert runs(marker) == 1
    assert [b["limit"] for b in service.events("blocked")] == ["cooldown"]
    service.stop()


# --- 4: refused attempts do not use up the rate limit or start the cooldown -----------------------


def test_refused_alerts_do_not_count_as_runs(stack: Stack) -> None:
    service, marker = app_setup(stack)
    bogus = [alert("AppInstanceDown", {**LABELS, "target": f"es-{n}"}) for n in (7, 8, 9)]
    service.post(payload(*bogus))
    outcomes = service.wait_outcome(3)
    assert [o["outcome"] for o in outcomes] == ["refused"] * 3
    service.post(payload(alert("AppInstanceDown", LABELS)))
    outcomes = service.wait_outcome(4)
    assert outcomes[3]["outcome"] == "succeeded", outcomes[3]
    assert runs(marker) == 1
    service.stop()


# --- 5: resolved before firing -------------------------------------------------------------------


def test_resolved_before_firing_is_remembered(stack: Stack) -> None:
    service, marker = app_setup(stack)
    firing = alert("AppInstanceDown", LABELS)
    assert service.post(payload(dict(firing, status="resolved"))).json() == {
        "status": "recorded",
        "ignored": 1,
    }
    assert service.post(payload(firing)).json() == {"status": "recorded", "stale": 1}
    # a later alert the worker sees after the stale one: once it is done, the stale one was not run
    service.post(payload(alert("AppLatencyHigh", LABELS)))
    wait_for(lambda: service.events("blocked"), 10, "the later alert blocked")
    drained(service)
    assert runs(marker) == 0 and not service.events("action_started")
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="stale") == 1
    service.stop()


# --- 6: a hanging restart command -----------------------------------------------------------------

HANGING_SCRIPT = """
import os, subprocess, sys, time
marker = sys.argv[1]
child = subprocess.Popen(["sleep", "600"])
with open(marker, "a") as handle:
    handle.write(f"{os.getpid()} {child.pid}\\n")
print("started", flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def hanging_setup(stack: Stack, **recovery: Any) -> tuple[RecoveryProcess, Path, int]:
    """A service running a restart command that hangs (with a child) for es-1, whose port is returned."""
    marker = stack.path("hang.marker")
    script = stack.path("hang.py")
    script.write_text(HANGING_SCRIPT)
    port = free_port()
    clusters = [app_cluster([("es-1", "primary", f"http://127.0.0.1:{port}/health")])]
    command = [sys.executable, str(script), str(marker)]
    settings = {"allow": ALLOW, "clusters": {"web": {"restart_commands": {"es-1": command}}}, **recovery}
    service = start_recovery(stack, clusters, settings)
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 200
    wait_for(lambda: marker.exists() and marker.read_text().endswith("\n"), 15, "command started")
    return service, marker, port


def pids(marker: Path) -> list[int]:
    return [int(p) for p in marker.read_text().split()]


def test_a_hanging_command_is_killed_with_its_children_on_timeout(stack: Stack) -> None:
    service, marker, _ = hanging_setup(stack, action_timeout="6s")
    [outcome] = service.wait_outcome(timeout=20)
    assert outcome["outcome"] == "failed", outcome
    [finished] = service.events("command_finished")
    assert finished["exit_code"] == -1
    wait_for(lambda: not any(alive(p) for p in pids(marker)), 5, "command and child gone")
    service.stop()


def test_sigterm_does_not_wait_for_a_hanging_command_and_kills_it(stack: Stack) -> None:
    """docs/operations.md, row "running a restart command": SIGTERM kills the command's process group
    within the 5 s grace (not the 60 s default action timeout), and the restarted service resumes the
    alert verify-only: it never runs the command again."""
    service, marker, port = hanging_setup(stack)  # default action_timeout: 60 s
    wait_for(lambda: service.events("point_of_no_return"), 5, "past the point of no return")
    started = time.monotonic()
    service.proc.terminate()
    assert service.proc.wait(20) == 0
    assert time.monotonic() - started < 15
    [finished] = service.events("command_finished")
    assert finished["exit_code"] is None and finished["output"] == "killed", finished
    [interrupted] = service.events("action_interrupted")
    assert interrupted["then"] == "resume_verify_only", interrupted
    assert not service.events("outcome")
    wait_for(lambda: not any(alive(p) for p in pids(marker)), 5, "command and child gone")
    start_http_backend(stack, "es-1", port)  # the instance is back (as if the command had done it)
    restarted = launch(stack, service.config, service.state_dir, "recover-again")
    [outcome] = restarted.wait_outcome(timeout=30)
    assert outcome["outcome"] == "succeeded", outcome
    assert restarted.events("alert_resumed") and restarted.events("resumed_verify_only")
    assert len(marker.read_text().splitlines()) == 1  # the command ran once, before the SIGTERM
    restarted.stop()


@pytest.mark.slow
def test_resumed_after_sigterm_without_the_instance_times_out_and_never_reruns(stack: Stack) -> None:
    """The same row when the instance never comes back: the resumed run only verifies, until
    action_timeout, and ends timed_out (the command is not run again)."""
    # 16 s: the command's own timeout (8 s) outlasts the 5 s shutdown grace, so SIGTERM interrupts it
    service, marker, _ = hanging_setup(stack, action_timeout="16s")
    wait_for(lambda: service.events("point_of_no_return"), 5, "past the point of no return")
    service.proc.terminate()
    assert service.proc.wait(20) == 0
    assert [i["then"] for i in service.events("action_interrupted")] == ["resume_verify_only"]
    restarted = launch(stack, service.config, service.state_dir, "recover-again")
    [outcome] = restarted.wait_outcome(timeout=40)
    assert outcome["outcome"] == "timed_out", outcome
    assert restarted.events("resumed_verify_only")
    # one audit trail across both lives: the only command_finished is the one SIGTERM killed
    assert [f["exit_code"] for f in restarted.events("command_finished")] == [None]
    assert len(marker.read_text().splitlines()) == 1
    restarted.stop()


# --- 7: hostile webhook bodies --------------------------------------------------------------------


def test_deep_json_long_label_names_and_large_groups(stack: Stack) -> None:
    service, _ = app_setup(stack)
    deep = b"[" * 100_000 + b"]" * 100_000
    response = service.post(deep, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    name = "L" * 5000
    hostile = payload(alert("AppInstanceDown", {**LABELS, name: "x"}))
    response = service.post(hostile)
    assert response.status_code == 422 and "LLLLLLLL" not in response.text, response.text[:300]
    assert "LLLLLLLL" not in (service.state_dir / "audit.jsonl").read_text()
    # a whole Alertmanager group: 1,500 alerts, the one that matters among them
    others = [alert("SomethingElse", {"cluster": "web", "n": str(i)}) for i in range(1499)]
    group = payload(*others[:700], alert("AppInstanceDown", LABELS), *others[700:])
    group["truncatedAlerts"] = 7
    response = service.post(group, timeout=30)
    assert response.status_code == 200, response.text[:300]
    outcome = wait_for(
        lambda: [o for o in service.events("outcome") if o["alert"] == "AppInstanceDown"],
        60,
        "the real alert ran",
    )[0]
    assert outcome["outcome"] == "succeeded", outcome
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_truncated_alerts_total") == 7
    service.stop()


# --- 8: slow clients ------------------------------------------------------------------------------


@pytest.mark.slow
def test_slow_clients_do_not_starve_real_notifications(stack: Stack) -> None:
    service, _ = app_setup(stack)
    service.stop()
    # the same service with 256 open files: 300 slow connections would exhaust them
    service = launch(stack, service.config, service.state_dir, "recover-small", nofile=256)
    port = int(service.url.rsplit(":", 1)[1])
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"P")
            slow.append(sock)
        for sock in slow:
            try:
                sock.sendall(b"O")
            except OSError:
                pass  # the server may already have dropped it
        started = time.monotonic()
        response = service.post(payload(alert("AppInstanceDown", LABELS)), timeout=5)
        assert response.status_code == 200 and time.monotonic() - started < 5
        assert httpx.get(service.url + "/health", timeout=5).status_code == 200
        for sock in slow:
            sock.close()
        # after the read timeout (10 s): a request head that never ends is closed, a body that never
        # ends is answered 408
        head = socket.create_connection(("127.0.0.1", port), timeout=20)
        head.sendall(b"POST /webhook HTTP/1.1\r\n")
        body = socket.create_connection(("127.0.0.1", port), timeout=20)
        body.sendall(
            f"POST /webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        started = time.monotonic()
        assert head.recv(100) == b""
        assert 8 < time.monotonic() - started < 15
        assert body.recv(100).startswith(b"HTTP/1.1 408")
        head.close()
        body.close()
    finally:
        for sock in slow:
            sock.close()
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "succeeded"
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_connections_dropped_total", reason="evicted") >= 100
    assert metric_value(metrics, "tierwatch_recovery_connections_dropped_total", reason="read_timeout") >= 1
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="timed_out") == 1
    service.stop()


# --- 9: unauthenticated floods and a large audit trail --------------------------------------------


def test_unauthenticated_flood_is_counted_not_written(stack: Stack) -> None:
    service, _ = app_setup(stack)

    def flood(count: int) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(count):
                assert client.post(service.url + "/webhook", content=b"{}").status_code == 401

    threads = [threading.Thread(target=flood, args=(250,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="unauthorized") == 2000
    rejected = service.events("notification_rejected")
    assert 1 <= len(rejected) <= 5, len(rejected)
    service.stop()


def test_audit_endpoint_reads_a_bounded_tail(stack: Stack) -> None:
    service, _ = app_setup(stack)
    service.stop()
    line = json.dumps({"ts": 1.0, "event": "filler", "pad": "x" * 200}) + "\n"
    with open(service.state_dir / "audit.jsonl", "a") as handle:
        for _ in range(40):
            handle.write(line * 5000)  # 40 x ~1.1 MB
    service = launch(stack, service.config, service.state_dir, "recover-big-audit")
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 200
    service.wait_outcome()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    slowest = 0.0
    stop = threading.Event()

    def watch_health() -> None:
        nonlocal slowest
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                started = time.monotonic()
                client.get(service.url + "/health")
                slowest = max(slowest, time.monotonic() - started)

    watcher = threading.Thread(target=watch_health)
    watcher.start()
    try:
        for _ in range(5):
            started = time.monotonic()
            entries = httpx.get(service.url + "/audit", headers=headers, timeout=30).json()
            assert time.monotonic() - started < 1.0
            assert len(entries) == 200 and any(e["event"] == "outcome" for e in entries[-10:])
    finally:
        stop.set()
        watcher.join(30)
    assert slowest < 0.3, slowest
    service.stop()
