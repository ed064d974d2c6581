"""Recovery service replicas with a leader lease in a real 3-member etcd cluster (recovery.ha), with the
default cooldown, rate limit and lease TTL: one replica acts; kill -9 of the leader hands over within
the TTL and the accepted alert is finished exactly once; without quorum nobody acts and says so; a lease
lost before the point of no return stops the action."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tierwatch.config import ConfigError, load_config
from tierwatch.recovery.service import RecoveryService
from tierwatch.recovery.webhook import parse_payload
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.etcd import EtcdCluster, start_etcd_cluster
from tierwatch_lab.stack.http import start_http_backend

from helpers import metric_value
from partition_fixtures import Gate
from recovery_fixtures import (
    RESTART_LABELS,
    TOKEN,
    RecoveryProcess,
    alert,
    app_cluster,
    kill_started_backends,
    payload,
    restart_command,
    start_recovery,
)

ALLOW = {"AppInstanceDown": "restart_instance"}
TTL = 10.0  # the default lease_ttl
RETRY = 1.0  # the default retry_interval
KEY = "/tierwatch/recovery/leader"


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def replica(
    stack: Stack,
    etcd: EtcdCluster,
    name: str,
    target_url: str,
    command: list[str],
    endpoints: list[str] | None = None,
) -> RecoveryProcess:
    """One replica (its own state directory) of the recovery service, lease in ``etcd`` (reached
    through ``endpoints`` when given)."""
    clusters = [app_cluster([("es-1", "primary", target_url)])]
    settings = {
        "allow": ALLOW,
        "clusters": {"web": {"restart_commands": {"es-1": command}}},
        "ha": {"etcd": endpoints or etcd.endpoints, "name": name},
    }
    state = stack.directory(f"state-{name}")
    return start_recovery(stack, clusters, settings, state_dir=state, name=f"recover-{name}")


def status(service: RecoveryProcess) -> str:
    return httpx.get(service.url + "/-/ready", timeout=5).text


def metric(service: RecoveryProcess, name: str) -> float | None:
    return metric_value(httpx.get(service.url + "/metrics", timeout=5).text, name)


def leader_key(etcd: EtcdCluster) -> dict[str, Any] | None:
    encoded = base64.b64encode(KEY.encode()).decode()
    kvs = httpx.post(etcd.endpoints[0] + "/v3/kv/range", json={"key": encoded}, timeout=5).json().get("kvs")
    return kvs[0] if kvs else None


@pytest.mark.slow
def test_kill_9_of_the_leader_hands_over_within_the_ttl_and_the_alert_is_finished_once(stack: Stack) -> None:
    etcd = start_etcd_cluster(stack)
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    command = restart_command(marker, port, delay=4.0)  # runs past the point of no return for 4 s
    target = f"http://127.0.0.1:{port}/health"
    a = replica(stack, etcd, "a", target, command)
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    b = replica(stack, etcd, "b", target, command)
    wait_for(lambda: "follower (leader: a)" in status(b), 10, "replica b follows a")
    assert metric(a, "tierwatch_recovery_leader") == 1 and metric(b, "tierwatch_recovery_leader") == 0
    token = int(leader_key(etcd)["create_revision"])  # type: ignore[index]

    body = payload(alert("AppInstanceDown", RESTART_LABELS))
    for service in (a, b):  # Alertmanager sends to every replica
        assert service.post(body).json() == {"status": "recorded", "accepted": 1}
    wait_for(lambda: runs(marker) == 1, 15, "the leader's restart command started")
    [ponr] = a.events("point_of_no_return")
    a.kill()  # kill -9 past the point of no return, before the outcome
    killed = time.time()
    assert not a.events("outcome")

    [outcome] = b.wait_outcome(timeout=TTL + 20)
    assert outcome["outcome"] == "succeeded", outcome
    [acquired] = b.events("lease_acquired")
    takeover = acquired["ts"] - killed
    print(f"takeover after kill -9 of the leader: {takeover:.2f}s (lease_ttl {TTL:g}s)")
    assert takeover <= TTL + RETRY + 1.5, takeover
    [taken] = b.events("takeover")
    assert taken["resumed"] == [ponr["key"]] and taken["token"] > token
    assert b.events("resumed_verify_only"), "the new leader verified, it did not restart again"
    assert runs(marker) == 1, "exactly one restart across both replicas"
    assert httpx.get(target, timeout=5).status_code == 200
    assert metric(b, "tierwatch_recovery_leader") == 1
    assert metric(b, "tierwatch_recovery_lease_lost_total") == 0
    assert int(leader_key(etcd)["create_revision"]) == taken["token"]  # type: ignore[index]
    b.stop()


def put(etcd: EtcdCluster, key: str, value: str) -> None:
    encoded = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }
    assert httpx.post(etcd.endpoints[0] + "/v3/kv/put", json=encoded, timeout=5).status_code == 200


def test_a_follower_accepts_but_never_acts_and_a_clean_stop_hands_over_at_once(stack: Stack) -> None:
    etcd = start_etcd_cluster(stack)
    # records no replica could have written: a takeover skips them instead of failing
    put(etcd, f"{KEY}/ledger/ponr/garbage", "not json")
    put(etcd, f"{KEY}/ledger/ponr/wrong", '{"key": 5, "cluster": null}')
    put(etcd, f"{KEY}/ledger/done/x/list", "[1, 2]")
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    command = restart_command(marker, port)
    target = f"http://127.0.0.1:{port}/health"
    a = replica(stack, etcd, "a", target, command)
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    b = replica(stack, etcd, "b", target, command)
    body = payload(alert("AppInstanceDown", RESTART_LABELS))
    assert b.post(body).json() == {"status": "recorded", "accepted": 1}  # only the follower got it
    time.sleep(3)
    assert runs(marker) == 0 and not b.events("action_started"), "a follower does not act"
    stopped = time.time()
    a.stop()  # SIGTERM: the leader revokes its lease, the follower need not wait for the TTL
    [outcome] = b.wait_outcome(timeout=TTL + 20)
    assert outcome["outcome"] == "succeeded" and runs(marker) == 1
    assert len(a.events("takeover")) == 1 and len(b.events("takeover")) == 1
    [acquired] = b.events("lease_acquired")
    print(f"takeover after a clean stop of the leader: {acquired['ts'] - stopped:.2f}s")
    assert acquired["ts"] - stopped < RETRY + 2.0
    b.stop()


@pytest.mark.slow
def test_one_etcd_member_down_changes_nothing(stack: Stack) -> None:
    etcd = start_etcd_cluster(stack)
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    a = replica(stack, etcd, "a", f"http://127.0.0.1:{port}/health", restart_command(marker, port))
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    etcd.kill_member(0)  # the member the client asks first
    time.sleep(TTL)  # three renewals through the other members
    assert (
        metric(a, "tierwatch_recovery_leader") == 1 and metric(a, "tierwatch_recovery_lease_lost_total") == 0
    )
    assert a.post(payload(alert("AppInstanceDown", RESTART_LABELS))).status_code == 200
    [outcome] = a.wait_outcome(timeout=20)
    assert outcome["outcome"] == "succeeded" and runs(marker) == 1
    a.stop()


@pytest.mark.slow
def test_without_quorum_no_replica_acts_and_it_says_so(stack: Stack) -> None:
    etcd = start_etcd_cluster(stack)
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    a = replica(stack, etcd, "a", f"http://127.0.0.1:{port}/health", restart_command(marker, port))
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    lost_at = time.time()
    etcd.stop_member(1)
    etcd.stop_member(2)  # 1 of 3: no quorum
    gone = time.time()
    wait_for(lambda: metric(a, "tierwatch_recovery_leader") == 0, TTL + 2, "the leader steps down")
    print(f"stepped down {time.time() - gone:.2f}s after quorum loss ({gone - lost_at:.2f}s to stop 2)")
    assert metric(a, "tierwatch_recovery_lease_lost_total") == 1
    assert "not acting, etcd unavailable" in status(a)
    body = payload(alert("AppInstanceDown", RESTART_LABELS))
    assert a.post(body).json() == {"status": "recorded", "accepted": 1}  # still recorded durably
    wait_for(lambda: a.events("not_acting"), 5, "the refusal to act audited")
    time.sleep(2)
    assert runs(marker) == 0 and not a.events("action_started")
    log = a.log.read_text()
    assert "WARNING lease_lost " in log and "ERROR not_acting " in log
    etcd.start_member(1)  # quorum again: the replica takes the lease and finishes the alert
    [outcome] = a.wait_outcome(timeout=TTL + 20)
    assert outcome["outcome"] == "succeeded" and runs(marker) == 1
    a.stop()


def test_a_lease_lost_before_the_point_of_no_return_stops_the_action(stack: Stack) -> None:
    etcd = start_etcd_cluster(stack)
    hanging = start_http_backend(stack, "hanging")
    hanging.set_mode("hang")  # the live check waits its probe timeout: the action sits before its PONR
    marker = stack.path("restart.marker")
    a = replica(stack, etcd, "a", hanging.url, restart_command(marker, free_port()))
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    assert a.post(payload(alert("AppInstanceDown", RESTART_LABELS))).status_code == 200
    wait_for(lambda: a.events("action_started"), 10, "action started")
    # another leader takes the key (as after an expiry this replica did not notice): a new revision
    encoded = base64.b64encode(KEY.encode()).decode()
    httpx.post(etcd.endpoints[0] + "/v3/kv/deleterange", json={"key": encoded}, timeout=5)
    value = base64.b64encode(b"intruder").decode()
    httpx.post(etcd.endpoints[0] + "/v3/kv/put", json={"key": encoded, "value": value}, timeout=5)
    stopped = wait_for(
        lambda: a.events("action_stopped") or a.events("action_interrupted"), 15, "action stopped"
    )
    assert stopped[0]["reason"] == "lease_lost", stopped
    time.sleep(3)
    assert not a.events("point_of_no_return") and runs(marker) == 0
    assert not a.events("outcome"), "the alert stays for the leader"
    assert metric(a, "tierwatch_recovery_lease_lost_total") == 1
    assert "follower (leader: intruder)" in status(a)
    a.stop()


@pytest.mark.parametrize(
    ("ha", "expected"),
    [
        ({"etcd": []}, "recovery.ha.etcd: list should have at least 1 item"),
        ({"etcd": ["10.0.0.1:2379"]}, "expected an etcd client URL such as http://10.0.0.1:2379"),
        ({"etcd": ["http://e:2379"], "lease_ttl": "1s"}, "lease_ttl: expected 2s to 5m"),
        ({"etcd": ["http://e:2379"], "key": "leader"}, "recovery.ha.key"),
        ({"etcd": ["http://e:2379"], "ttl": "5s"}, "recovery.ha.ttl"),
    ],
)
def test_bad_ha_settings_are_named(
    write_config: Callable[..., Path], ha: dict[str, Any], expected: str
) -> None:
    path = write_config({"clusters": [], "recovery": {"ha": ha}})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    assert str(path) in text and expected in text, text


@pytest.mark.slow
def test_a_paused_leader_wakes_up_as_a_follower_and_does_not_act(stack: Stack) -> None:
    """The GC-pause split brain: SIGSTOP the leader mid-action beyond the TTL, another replica leads,
    SIGCONT: the old leader's action reaches its point of no return with a stale token and stops."""
    etcd = start_etcd_cluster(stack)
    hanging = start_http_backend(stack, "hanging")
    hanging.set_mode("hang")  # a's live check waits its probe timeout: the action is before its PONR
    marker = stack.path("restart.marker")
    command = restart_command(marker, free_port())
    a = replica(stack, etcd, "a", hanging.url, command)
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    b = replica(stack, etcd, "b", hanging.url, command)
    assert a.post(payload(alert("AppInstanceDown", RESTART_LABELS))).status_code == 200
    wait_for(lambda: a.events("action_started"), 10, "a's action started")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: "leader (token" in status(b), TTL + RETRY + 5, "b leads while a is paused")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    stopped = wait_for(
        lambda: a.events("action_stopped") or a.events("action_interrupted"), 15, "a's action stopped"
    )
    assert stopped[0]["reason"] == "lease_lost", stopped
    wait_for(lambda: "follower (leader: b)" in status(a), 10, "a follows b")
    time.sleep(2)
    assert not a.events("point_of_no_return") and runs(marker) == 0
    assert metric(a, "tierwatch_recovery_lease_lost_total") == 1
    assert metric(b, "tierwatch_recovery_leader") == 1 and metric(a, "tierwatch_recovery_leader") == 0
    a.stop()
    b.stop()


@pytest.mark.slow
def test_a_leader_partitioned_from_etcd_stops_acting_and_the_other_replica_acts_once(stack: Stack) -> None:
    """A full partition between the leader and every etcd member (bytes stop, nothing is refused),
    while Alertmanager still reaches both replicas: the cut-off leader's lease runs out locally before
    etcd's, so it does not pass its point of no return; the other replica leads within the TTL and
    restarts the instance once. After the heal the old leader follows."""
    etcd = start_etcd_cluster(stack)
    gates = [Gate(int(url.rsplit(":", 1)[1])) for url in etcd.endpoints]
    for gate in gates:
        stack.on_close(gate.close)
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    command = restart_command(marker, port)
    target = f"http://127.0.0.1:{port}/health"  # down until restarted
    a = replica(stack, etcd, "a", target, command, [f"http://127.0.0.1:{g.port}" for g in gates])
    wait_for(lambda: "leader (token" in status(a), 15, "replica a leads")
    b = replica(stack, etcd, "b", target, command)
    wait_for(lambda: "follower (leader: a)" in status(b), 10, "replica b follows a")

    for gate in gates:
        gate.blackhole()
    cut = time.time()
    body = payload(alert("AppInstanceDown", RESTART_LABELS))
    for service in (a, b):
        assert service.post(body).json() == {"status": "recorded", "accepted": 1}
    [outcome] = b.wait_outcome(timeout=TTL + 20)
    assert outcome["outcome"] == "succeeded", outcome
    [acquired] = b.events("lease_acquired")
    print(f"b led {acquired['ts'] - cut:.2f}s after the partition (lease_ttl {TTL:g}s)")
    assert acquired["ts"] - cut <= TTL + RETRY + 1.5
    [lost] = a.events("lease_lost")  # its own deadline (renewal sent + TTL) falls before etcd's expiry
    print(f"a gave up the lease {lost['ts'] - cut:.2f}s after the partition: {lost['reason']}")
    assert not a.events("point_of_no_return") and not a.events("outcome"), a.audit()
    assert "leader (token" not in status(a)
    assert runs(marker) == 1

    for gate in gates:
        gate.heal()
    wait_for(lambda: "follower (leader: b)" in status(a), 15, "a follows b after the heal")
    time.sleep(2)
    assert runs(marker) == 1 and not a.events("point_of_no_return")
    assert metric(a, "tierwatch_recovery_leader") == 0 and metric(b, "tierwatch_recovery_leader") == 1
    a.stop()
    b.stop()


def test_a_lease_lost_at_the_point_of_no_return_requeues_the_alert_even_if_cancelled_meanwhile(
    stack: Stack,
) -> None:
    """The race the paused-leader test found once in eight runs: the action reaches its point of no
    return with a stale token (LeaseLost) and, while it backs off, the worker sees the lost lease and
    cancels it. The alert must still go back to the inbox and the stop be audited."""
    etcd = start_etcd_cluster(stack)
    token_file = stack.path("secrets", "token")
    token_file.write_text(TOKEN + "\n")
    state = stack.directory("state-inproc")
    dead = f"http://127.0.0.1:{free_port()}/health"  # refused at once: the live check is quick
    settings = {
        "state_dir": str(state),
        "auth": {"bearer_token_file": str(token_file)},
        "allow": ALLOW,
        "clusters": {"web": {"restart_commands": {"es-1": restart_command(stack.path("m"), free_port())}}},
        "ha": {"etcd": etcd.endpoints, "name": "inproc"},
    }
    config = stack.path("inproc.yml")
    config.write_text(
        yaml.safe_dump({"clusters": [app_cluster([("es-1", "primary", dead)])], "recovery": settings})
    )
    loaded = load_config(config)
    assert loaded.config.recovery is not None

    async def scenario() -> tuple[str, list[str]]:
        service = RecoveryService(loaded, loaded.config.recovery)  # type: ignore[arg-type]
        try:
            body = json.dumps(payload(alert("AppInstanceDown", RESTART_LABELS))).encode()
            service.inbox.record(parse_payload(body))
            claimed = service.inbox.claim_next()
            assert claimed is not None
            # never campaigned: no lease, LeaseLost at the PONR
            task = service.worker.start(claimed, resumed=False)
            for _ in range(100):  # bounded: the live check of a refused port takes milliseconds
                await asyncio.sleep(0.05)
                await service.audit.flush()
                if any(e["event"] == "live_check" for e in _audit(state)):
                    break
            await asyncio.sleep(0.3)  # inside the 1 s back-off after LeaseLost
            service.stop_before_point_of_no_return("lease_lost")
            await asyncio.wait([task], timeout=5)
            await service.audit.flush()
            stored = service.inbox.get(claimed.key)
            return (stored.state if stored else "gone"), [e["event"] for e in _audit(state)]
        finally:
            service.close()

    state_after, events = asyncio.run(scenario())
    assert "live_check" in events and "point_of_no_return" not in events, events
    assert "action_stopped" in events or "action_interrupted" in events, events
    assert state_after == "pending", (state_after, events)


def _audit(state: Path) -> list[dict[str, Any]]:
    path = state / "audit.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
