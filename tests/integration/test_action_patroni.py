"""pg_promote on a real Patroni cluster (tests/patroni_fixtures.py: three members over a lab etcd,
Patroni at its fastest timing) with an HAProxy write backend over the three PostgreSQL servers: the
recovery service waits for Patroni's election, moves the writes and verifies; it never promotes (a
paused cluster with a dead leader stays without a primary), and a lying member does not choose the
server the writes go to. The refusals with lying members only: test_action_patroni_refusals.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from patroni_fakes import FakeMember, fake_members
from patroni_fixtures import patroni_cluster, patroni_cluster_config  # noqa: F401 (a fixture)

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.patroni_election import PATRONI_PAUSED
from tierwatch.recovery.actions.pg_promote import CHECK_TABLE, PgPromote
from tierwatch.recovery.discovery import backend_primary
from tierwatch_lab.stack import wait_for
from tierwatch_lab.stack.patroni import PatroniCluster, PatroniMember

from action_fixtures import Recorder, lb_cluster, make_context, start_tcp_lb

pytestmark = pytest.mark.slow

CLUSTER = "main-db"
BACKEND = "be_pg_write"
REPLAYED = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"


def setup(
    cluster: PatroniCluster, make_config: Callable[..., LoadedConfig], urls: dict[str, str] | None = None
) -> LoadedConfig:
    """The Patroni cluster's config entry (member REST URLs replaced by ``urls``) and a write LB."""
    lb = start_tcp_lb(cluster.stack, "lb-1", BACKEND, [(m.name, m.pg_port) for m in cluster.members])
    entry = patroni_cluster_config(cluster, CLUSTER)
    for member in entry["patroni"]["members"]:
        member["url"] = (urls or {}).get(member["target"], member["url"])
    # a 2 s read timeout: the liar below asks the real members before it answers
    return make_config([entry, lb_cluster(lb)], interval="5s", timeout="2s")


def settings(cluster: PatroniCluster, **extra: Any) -> ClusterRecovery:
    return ClusterRecovery(
        admin_user=cluster.admin_role,
        admin_password_file=str(cluster.admin_password_file),
        write_backend=BACKEND,
        **extra,
    )


def run(ctx: Any) -> Outcome:
    return asyncio.run(PgPromote().run(ctx))


def promoted_by_patroni(cluster: PatroniCluster, member: PatroniMember) -> bool:
    """Patroni's own log of ``member`` says Patroni promoted it (ha.py's message)."""
    log = cluster.stack.path("logs", f"{member.name}.log").read_text(errors="replace")
    return "promoted self to leader" in log


def kill_leader(cluster: PatroniCluster) -> PatroniMember:
    """Write a row on the leader, wait until every replica has it, SIGKILL the leader's node."""
    old = cluster.wait_leader()
    with old.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_kill (id int PRIMARY KEY)")
        conn.execute("INSERT INTO before_kill VALUES (1)")
        position = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    for member in cluster.members:
        if member is not old:
            wait_for(
                lambda m=member: m.scalar(REPLAYED, (position,)), 30, f"{member.name} to replay {position}"
            )
    old.kill()
    return old


def assert_no_promotion_by_the_kit(recorder: Recorder) -> None:
    for event in ("promoted", "promote_failed", "repointed", "repoint_failed"):
        assert not recorder.named(event), (event, recorder.text())


def test_waits_for_patronis_election_then_moves_the_writes(
    patroni_cluster: PatroniCluster,  # noqa: F811 (the fixture)
    make_config: Callable[..., LoadedConfig],
) -> None:
    cluster = patroni_cluster
    loaded = setup(cluster, make_config)
    old = kill_leader(cluster)
    ctx, recorder = make_context(
        loaded, CLUSTER, {"alertname": "PostgresPrimaryDown", "target": old.name}, settings=settings(cluster)
    )
    started = time.monotonic()
    outcome = run(ctx)
    took = time.monotonic() - started

    assert outcome.status == "succeeded", (outcome, recorder.text())
    new = cluster.wait_leader(not_=old)
    assert outcome.facts["new_primary"] == new.name and outcome.facts["old_primary"] == old.name
    assert outcome.facts["via"] == "patroni" and outcome.facts["old_primary_fencing"] == "patroni"
    [elected] = recorder.named("patroni_elected")
    assert elected["target"] == new.name and elected["votes"] >= 2 and elected["of"] == 3
    assert recorder.named("waiting_for_patroni")[0]["needed"] == 2
    assert_no_promotion_by_the_kit(recorder)
    assert promoted_by_patroni(cluster, new)
    assert recorder.point_of_no_return_calls == 1 and recorder.decisions == [None]
    # the writes go to Patroni's leader only; it took the kit's write check and has the row from before
    assert asyncio.run(backend_primary(loaded, BACKEND)) == {"lb-1": [new.name]}
    assert new.scalar("SELECT count(*) FROM before_kill") == 1
    assert new.scalar(f"SELECT count(*) FROM {CHECK_TABLE}") == 1
    other = next(m for m in cluster.members if m not in (old, new))
    assert other.in_recovery()
    [verified] = recorder.named("verified")
    assert verified["new_primary"] == new.name and verified["replicas"] == [other.name]
    print(f"\nelection waited {elected['waited_s']}s, action {took:.1f}s")


def test_paused_cluster_with_a_dead_leader_is_refused_and_nobody_promotes(
    patroni_cluster: PatroniCluster,  # noqa: F811 (the fixture)
    make_config: Callable[..., LoadedConfig],
) -> None:
    """Maintenance mode: Patroni will not fail over. An action that promoted by itself would leave a
    replica out of recovery; this one refuses at once and both replicas stay replicas."""
    cluster = patroni_cluster
    loaded = setup(cluster, make_config)
    leader = cluster.wait_leader()
    response = httpx.patch(f"{leader.rest_url}/config", json={"pause": True}, timeout=5)
    assert response.status_code == 200, response.text
    for member in cluster.members:
        wait_for(lambda m=member: m.rest("/patroni")[1].get("pause") is True, 30, f"{member.name} paused")
    backend = asyncio.run(backend_primary(loaded, BACKEND))
    old = kill_leader(cluster)
    ctx, recorder = make_context(
        loaded,
        CLUSTER,
        {"alertname": "PostgresPrimaryDown", "target": old.name},
        settings=settings(cluster, patroni_wait=30),
    )
    started = time.monotonic()
    outcome = run(ctx)
    took = time.monotonic() - started

    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.facts["limit"] == PATRONI_PAUSED
    assert took < 15, took  # at once, not after patroni_wait
    assert recorder.named("patroni_paused") and recorder.point_of_no_return_calls == 0
    assert_no_promotion_by_the_kit(recorder)
    replicas = [m for m in cluster.members if m is not old]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # and they stay so: nobody promotes behind the refusal
        assert all(m.in_recovery() for m in replicas)
        time.sleep(0.5)
    assert asyncio.run(backend_primary(loaded, BACKEND)) == backend  # the writes were not moved


def test_a_lying_member_is_outvoted(
    patroni_cluster: PatroniCluster,  # noqa: F811 (the fixture)
    make_config: Callable[..., LoadedConfig],
) -> None:
    """The dead leader's REST address is answered by a liar: it says the cluster is paused and that
    the replica Patroni did not elect leads, as primary/running. The two real members outvote it."""
    cluster = patroni_cluster
    old = cluster.wait_leader()
    ports = {m.name: m.pg_port for m in cluster.members}

    def not_patronis_choice() -> str | None:
        named = cluster.leader()
        others = [m.name for m in cluster.members if m is not old and (named is None or m is not named)]
        return others[0] if named is not None and named is not old else None

    liar = FakeMember(old.name, ports, leader=not_patronis_choice, role="primary", paused=True)
    with fake_members([liar]):
        loaded = setup(cluster, make_config, {old.name: liar.url})
        kill_leader(cluster)
        ctx, recorder = make_context(
            loaded,
            CLUSTER,
            {"alertname": "PostgresPrimaryDown", "target": old.name},
            settings=settings(cluster),
        )
        outcome = run(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    new = cluster.wait_leader(not_=old)
    assert outcome.facts["new_primary"] == new.name
    assert promoted_by_patroni(cluster, new)
    assert_no_promotion_by_the_kit(recorder)
    [elected] = recorder.named("patroni_elected")
    assert elected["votes"] == 2, elected
    assert "paused" in elected["answers"][old.name], elected
    assert asyncio.run(backend_primary(loaded, BACKEND)) == {"lb-1": [new.name]}
    assert liar.requests, "the liar was asked"
