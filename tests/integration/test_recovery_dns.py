"""The recovery service's DNS step against a real Knot DNS: a Redis failover moves the record of the
cluster's primary (compare-and-swap, TSIG, read back), a record changed by hand is not overwritten,
a leader that lost its lease publishes nothing, a stale leader cannot move a record back, a server
that is down is retried until update_timeout (the default), a wrong key is refused without showing
it, and an app cluster's record follows the region a regional failover moves to."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_action_redis_failover import ALERT, BACKEND, CLUSTER, lag_then_kill, load, run, start_trio

from tierwatch.clients.dns_update import query_rrset
from tierwatch.config import LoadedConfig, load_config
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.dns_records import publish
from tierwatch.recovery.lease import LeaseLost
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.knot import KnotServer, start_knot
from tierwatch_lab.stack.redis import RedisServer

from action_fixtures import make_context, start_tcp_lb

ZONE = "tierwatch.test."
RECORD = f"primary.{CLUSTER}.{ZONE}"


def srv(port: int) -> str:
    return f"0 0 {port} node.{ZONE}"


def add_dns(
    loaded: LoadedConfig, knot: KnotServer, records: list[dict[str, Any]], **extra: Any
) -> LoadedConfig:
    """``loaded``'s config file with a ``service_discovery`` section for ``knot``, loaded again."""
    raw = yaml.safe_load(loaded.path.read_text())
    raw["service_discovery"] = {
        "server": f"127.0.0.1:{knot.port}",
        "zone": ZONE,
        "key": {"name": knot.key_name, "algorithm": knot.key_algorithm, "secret_file": str(knot.key_file)},
        "ttl": 5,
        "records": records,
        **extra,
    }
    loaded.path.write_text(yaml.safe_dump(raw))
    return load_config(loaded.path)


def redis_record(servers: list[RedisServer]) -> dict[str, Any]:
    return {
        "name": f"primary.{CLUSTER}",
        "cluster": CLUSTER,
        "values": {s.name: srv(s.port) for s in servers},
    }


def lookup(knot: KnotServer, name: str = RECORD, rdtype: str = "SRV") -> frozenset[str]:
    return asyncio.run(query_rrset(knot.address(), name, rdtype, 2.0))


@pytest.fixture
def trio(stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path) -> tuple[Any, ...]:
    """A Redis trio behind a write LB, a Knot server whose record names redis-1, the loaded config."""
    servers = start_trio(stack)
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers])
    knot = start_knot(stack, records=[f"primary.{CLUSTER} 5 IN SRV {srv(servers[0].port)}"], ttl=5)
    loaded = add_dns(load(make_config, tmp_path, servers, lb=lb), knot, [redis_record(servers)])
    return servers, knot, loaded


def test_a_failover_moves_the_record_to_the_new_master_and_reads_it_back(trio: tuple[Any, ...]) -> None:
    servers, knot, loaded = trio
    assert lookup(knot) == {srv(servers[0].port)}
    lag_then_kill(servers, servers[2])
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))
    outcome = run(ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-2"
    assert lookup(knot) == {srv(servers[1].port)}
    assert outcome.facts["dns"] == {RECORD: "updated"}
    assert 0 < outcome.facts["dns_after_s"] < 10
    order = [e["event"] for e in recorder.events]
    assert order.index("promoted") < order.index("write_backend_set") < order.index("dns_updating")
    assert order.index("dns_updating") < order.index("dns_updated") < order.index("verified")
    updating = recorder.named("dns_updating")[0]
    assert updating["old"] == [srv(servers[0].port)] and updating["new"] == srv(servers[1].port)
    assert knot.key_file.read_text().strip() not in recorder.text() + repr(outcome)


def test_a_record_changed_by_hand_is_not_overwritten_and_the_failover_stands(trio: tuple[Any, ...]) -> None:
    servers, knot, loaded = trio
    foreign = f"0 0 7777 elsewhere.{ZONE}"
    knot.set_rrset(f"primary.{CLUSTER}", "SRV", [foreign])  # an operator, with knotc
    lag_then_kill(servers, servers[2])
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))
    outcome = run(ctx)

    assert outcome.status == "failed" and outcome.failover, (outcome, recorder.text())
    assert "DNS not updated" in outcome.detail and "changed by someone else" in outcome.detail
    assert outcome.facts["new_primary"] == "redis-2"  # promoted and verified all the same
    assert servers[1].info("replication")["role"] == "master"
    assert outcome.facts["dns"] == {RECORD: "conflict"}
    assert lookup(knot) == {foreign}
    assert recorder.named("dns_update_failed")[0]["result"] == "conflict"
    assert not recorder.named("dns_updating")


def test_a_leader_without_its_lease_publishes_nothing(trio: tuple[Any, ...]) -> None:
    servers, knot, loaded = trio

    def lost() -> None:
        raise LeaseLost("lease gone")

    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    ctx.still_leading = lost
    with pytest.raises(LeaseLost):
        asyncio.run(publish(ctx, "redis-2", "redis-1"))
    assert lookup(knot) == {srv(servers[0].port)}
    assert not recorder.named("dns_updating")


def test_a_stale_leader_cannot_move_the_record_back(trio: tuple[Any, ...]) -> None:
    servers, knot, loaded = trio
    new_leader, _ = make_context(loaded, CLUSTER, ALERT)
    assert asyncio.run(publish(new_leader, "redis-3", "redis-1")).results == {RECORD: "updated"}  # type: ignore[union-attr]
    # the paused leader wakes with its own decision (redis-2 replaces redis-1) and a lease check that
    # has not noticed yet: the prerequisite is what stops it
    stale, recorder = make_context(loaded, CLUSTER, ALERT)
    results = asyncio.run(publish(stale, "redis-2", "redis-1"))
    assert results is not None and results.results == {RECORD: "conflict"}
    assert lookup(knot) == {srv(servers[2].port)}
    assert not recorder.named("dns_updating")


def test_a_server_down_is_retried_until_it_answers(trio: tuple[Any, ...]) -> None:
    servers, knot, loaded = trio
    knot.stop()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT)

    box: dict[str, Any] = {}
    # the step runs in a thread: knotd is started again from this one (a child started from a thread
    # that ends would get the stack's parent-death signal with it)
    step = threading.Thread(
        target=lambda: box.update(results=asyncio.run(publish(ctx, "redis-2", "redis-1")))
    )
    step.start()
    time.sleep(1.5)
    knot.start()
    step.join(30)
    results = box.get("results")
    assert results is not None and results.results == {RECORD: "updated"}, recorder.text()
    assert recorder.named("dns_retry") and recorder.named("dns_retry")[0]["kind"] == "unavailable"
    assert recorder.named("dns_updated")[0]["attempts"] > 1
    assert lookup(knot) == {srv(servers[1].port)}


def test_a_server_down_for_good_fails_the_step_at_update_timeout(trio: tuple[Any, ...]) -> None:
    _, knot, loaded = trio
    knot.stop()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    began = time.monotonic()
    results = asyncio.run(publish(ctx, "redis-2", "redis-1"))
    took = time.monotonic() - began
    assert results is not None and results.results == {RECORD: "unavailable"}
    assert not results.ok and "attempts" in results.problems[0]
    assert loaded.config.service_discovery is not None
    assert loaded.config.service_discovery.update_timeout == 10.0  # the default
    assert 9.0 < took < 16.0, took
    assert recorder.named("dns_update_failed")[0]["result"] == "unavailable"


def test_a_wrong_key_is_refused_without_showing_it(trio: tuple[Any, ...], tmp_path: Path) -> None:
    servers, knot, loaded = trio
    wrong = tmp_path / "wrong.key"
    wrong.write_text("d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=\n")
    wrong.chmod(0o600)
    raw_key = {"name": knot.key_name, "algorithm": knot.key_algorithm, "secret_file": str(wrong)}
    loaded = add_dns(loaded, knot, [redis_record(servers)], key=raw_key, update_timeout="2s")
    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    results = asyncio.run(publish(ctx, "redis-2", "redis-1"))
    assert results is not None and results.results == {RECORD: "refused"}
    assert lookup(knot) == {srv(servers[0].port)}
    text = recorder.text() + repr(results)
    assert "d3Jvbmct" not in text and knot.key_file.read_text().strip() not in text


def test_an_app_record_follows_the_region_a_regional_failover_moves_to(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    knot = start_knot(stack, records=[f"app 5 IN SRV {srv(8080)}"], ttl=5)
    targets = [
        {"name": "web-1", "region": "primary", "url": "http://127.0.0.1:8080/health"},
        {"name": "web-2", "region": "failover", "url": "http://127.0.0.1:8081/health"},
    ]
    loaded = make_config([{"name": "web", "tier": "app", "targets": targets}])
    record = {"name": "app", "cluster": "web", "values": {"primary": srv(8080), "failover": srv(8081)}}
    loaded = add_dns(loaded, knot, [record])
    ctx, recorder = make_context(loaded, "web", {"alertname": "RegionDown", "region": "primary"})
    results = asyncio.run(publish(ctx, "failover", "primary"))
    assert results is not None and results.results == {f"app.{ZONE}": "updated"}, recorder.text()
    assert lookup(knot, f"app.{ZONE}") == {srv(8081)}


def test_a_record_naming_another_dead_member_moves_when_the_alert_names_an_older_primary(
    trio: tuple[Any, ...],
) -> None:
    """Two failovers in a row, the second run for an alert that still names the first old master (the
    etcd quorum drill's case): the record names the master the kit promoted last, which is dead too;
    that is a member that did not answer, not someone else's change."""
    servers, knot, loaded = trio
    first, second, third = servers
    first.process.kill()
    second.client().execute_command("REPLICAOF", "NO", "ONE")  # the earlier failover's new master
    third.client().execute_command("REPLICAOF", second.host, str(second.port))
    knot.set_rrset(f"primary.{CLUSTER}", "SRV", [srv(second.port)])  # where that failover moved it
    second.process.kill()
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=ClusterRecovery(write_backend=BACKEND))
    outcome = run(ctx)
    assert outcome.facts.get("new_primary") == "redis-3", (outcome, recorder.text())
    assert outcome.facts["dns"] == {RECORD: "updated"}, (outcome, recorder.text())
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert lookup(knot) == {srv(third.port)}
