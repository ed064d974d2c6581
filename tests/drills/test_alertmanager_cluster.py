"""The watchers without a single point of failure, live: an HA Prometheus pair (the kit's rules, told apart
by ``external_labels: {replica: a|b}``) sends to every peer of a 3-peer Alertmanager cluster with real
gossip, running the shipped alertmanager.yml; a peer is killed; the recovery service still acts once
per incident (the pair's two copies and the peers' duplicates are recognised)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import yaml

from tierwatch_lab.kit import kit_dir
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.alertmanager import rewrite_for_test, start_alertmanager_cluster
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.prometheus import ScrapeJob, rules_with_for, start_prometheus_pair
from tierwatch_lab.stack.tierwatch import start_exporter

from recovery_fixtures import TOKEN, app_cluster, kill_started_backends, restart_command, start_recovery

PEER_TIMEOUT = 15.0  # Alertmanager's default --cluster.peer-timeout: peer n waits n times this before sending


def runs(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def test_prometheus_pair_and_alertmanager_cluster_with_a_peer_killed_act_once(stack: Stack) -> None:
    marker, port = stack.path("restart.marker"), free_port()
    stack.on_close(lambda: kill_started_backends(marker))
    healthy = start_http_backend(stack, "es-2")
    cluster = app_cluster(
        [("es-1", "primary", f"http://127.0.0.1:{port}/health"), ("es-2", "primary", healthy.url)]
    )
    service = start_recovery(
        stack,
        [cluster],
        {"allow": {"AppInstanceDown": "restart_instance"},
         "clusters": {"web": {"restart_commands": {"es-1": restart_command(marker, port)}}}},
    )  # fmt: skip
    exporter_config = stack.path("exporter.yml")
    exporter_config.write_text(
        yaml.safe_dump({"monitor": {"interval": "1s", "timeout": "500ms"}, "clusters": [cluster]})
    )
    exporter = start_exporter(stack, exporter_config)

    secrets = stack.directory("am-secrets")
    token_file = secrets / "recovery-token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    text = rewrite_for_test((kit_dir("alertmanager") / "alertmanager.yml").read_text(), secrets)
    text = text.replace("http://127.0.0.1:9490/webhook", f"{service.url}/webhook")
    peers = start_alertmanager_cluster(stack, text, size=3)
    rules = rules_with_for(
        sorted(kit_dir("rules").glob("*.rules.yml")), stack.directory("rules"), {"AppInstanceDown": "3s"}
    )
    pair = start_prometheus_pair(
        stack,
        [ScrapeJob("tierwatch", [exporter.address])],
        rules,
        alertmanagers=[f"127.0.0.1:{peer.port}" for peer in peers],
    )
    peers[0].process.kill()  # kill -9 one peer: the other two still gossip and send
    killed = time.time()

    [outcome] = service.wait_outcome(timeout=60)
    assert outcome["outcome"] == "succeeded", outcome
    print(f"restart done {outcome['ts'] - killed:.1f}s after the peer was killed")
    fired = 'count_over_time(ALERTS{alertname="AppInstanceDown",alertstate="firing"}[5m])'
    for prometheus in pair:  # both replicas fired it (each evaluates on its own clock: b may be later)
        wait_for(lambda p=prometheus: p.value(fired), 30, f"AppInstanceDown fired on {prometheus.url}")
    # give the peers that wait their turn (position times the peer timeout) the time to send too
    time.sleep(2 * PEER_TIMEOUT + 2)
    accepted = service.events("alert_accepted")
    duplicates = service.events("alert_duplicate")
    blocked = service.events("blocked")
    # replica b's copy is the same incident, or - when b fired only after a's restart had ended, as
    # its own evaluation clock allows - a new alert refused by the default cooldown: never a second run
    assert all(b["limit"] == "cooldown" for b in blocked), blocked
    assert len(accepted) == 1 + len(blocked), (accepted, blocked)
    assert any("same_incident_as" in d for d in duplicates) or blocked, "the pair's second copy"
    assert runs(marker) == 1 and len(service.events("outcome")) == 1
    print(f"deliveries: {len(accepted)} accepted, {len(duplicates)} duplicates")
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    service.stop()


def test_peers_gossip_silences_with_the_shipped_config(stack: Stack) -> None:
    text = rewrite_for_test(
        (kit_dir("alertmanager") / "alertmanager.yml").read_text(), stack.directory("am-secrets")
    )
    peers = start_alertmanager_cluster(stack, text, size=3)
    now = time.time()
    silence = {
        "matchers": [{"name": "cluster", "value": "web", "isRegex": False, "isEqual": True}],
        "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600)),
        "createdBy": "test",
        "comment": "maintenance",
    }
    created = peers[0].api("silences", silence)["silenceID"]

    def everywhere() -> bool:
        return all(any(s["id"] == created for s in peer.api("silences")) for peer in peers[1:])

    wait_for(everywhere, 15, "the silence gossiped to every peer")
    peers[0].process.kill()  # the peer it was made on: the others keep it
    assert all(any(s["id"] == created for s in peer.api("silences")) for peer in peers[1:])
