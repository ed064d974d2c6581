"""The failover template keeps cascades and regions (failover.py): real Redis servers in the demo's
shape, a master with two replicas in region ``primary`` and a backup master with its own replica
(a cascade: backup master → backup replica) in region ``failover``.

- An in-region failover re-points only the replicas of the old master: the backup master follows
  the new master, the backup replica stays under the backup master.
- A regional failover (the whole primary region gone) promotes the backup master and keeps the
  backup replica under it.
- A regional failover still prefers an eligible replica of the old master's region, even a less
  up-to-date one, and still refuses while the old master answers.
- The same cascade rule for PostgreSQL: a DR replica cascading from another DR replica keeps its
  upstream when its upstream is re-pointed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.pg_promote import PgPromote
from tierwatch.recovery.actions.redis_failover import RedisFailover
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.postgres import PgServer, start_replica
from tierwatch_lab.stack.redis import RedisServer, start_redis

from action_fixtures import make_context, start_pg_cluster
from partition_fixtures import Gate

PASSWORD = "cascade-test-secret-51c2"
CLUSTER = "cache-main"
REGIONS = {"redis-a": "primary", "redis-b": "primary", "redis-c": "primary"}
REGIONS |= {"redis-d": "failover", "redis-e": "failover"}
ALERT = {"alertname": "RedisMasterDown", "target": "redis-a"}


def start_demo_shape(stack: Stack, names: tuple[str, ...] = tuple(REGIONS)) -> dict[str, RedisServer]:
    """redis-a master; b, c, d replicas of a; e a replica of d (the backup pair's cascade)."""
    upstream = {"redis-b": "redis-a", "redis-c": "redis-a", "redis-d": "redis-a", "redis-e": "redis-d"}
    servers = {"redis-a": start_redis(stack, "redis-a", password=PASSWORD)}
    for name in names[1:]:
        servers[name] = start_redis(stack, name, password=PASSWORD, replica_of=servers[upstream[name]])
    return servers


def load(
    make_config: Callable[..., LoadedConfig], tmp_path: Path, servers: dict[str, RedisServer]
) -> LoadedConfig:
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    targets = [{"name": n, "region": REGIONS[n], "url": s.url} for n, s in servers.items()]
    return make_config([{"name": CLUSTER, "tier": "redis", "password_file": str(secret), "targets": targets}])


def run(action: Any, ctx: Any) -> Outcome:
    return asyncio.run(action.run(ctx))


def replication(server: RedisServer) -> dict[str, Any]:
    return server.info("replication")


def follows(replica: RedisServer, master: RedisServer) -> bool:
    info = replication(replica)
    return (
        info["role"] == "slave" and info["master_port"] == master.port and info["master_link_status"] == "up"
    )


def caught_up(servers: dict[str, RedisServer], master: str = "redis-a") -> None:
    servers[master].client().set("cascade:seed", "1")
    offset = replication(servers[master])["master_repl_offset"]
    for name, server in servers.items():
        if name != master:
            wait_for(lambda s=server: replication(s)["slave_repl_offset"] >= offset, 15, f"{name} caught up")


def test_in_region_failover_keeps_the_backup_replica_under_the_backup_master(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_demo_shape(stack)
    loaded = load(make_config, tmp_path, servers)
    caught_up(servers)
    servers["redis-a"].process.kill()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    outcome = run(RedisFailover(), ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    new = outcome.facts["new_primary"]
    assert new in ("redis-b", "redis-c") and REGIONS[new] == "primary"
    other = ({"redis-b", "redis-c"} - {new}).pop()
    assert follows(servers[other], servers[new])
    assert follows(servers["redis-d"], servers[new])  # the backup master follows the new master
    assert follows(servers["redis-e"], servers["redis-d"])  # and keeps its own replica under it
    assert outcome.facts["cascaded"] == {"redis-e": "redis-d"}
    assert {e["target"] for e in recorder.named("repointed")} == {other, "redis-d"}
    assert [(e["target"], e["upstream"]) for e in recorder.named("cascade_kept")] == [("redis-e", "redis-d")]
    assert set(recorder.named("verified")[0]["replicas"]) == {other, "redis-d", "redis-e"}

    # a run resumed after a restart past the point of no return keeps the cascade too
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, resumed=True)
    resumed = run(RedisFailover(), ctx)
    assert resumed.status == "succeeded", (resumed, recorder.text())
    assert resumed.facts["cascaded"] == {"redis-e": "redis-d"} and recorder.named("repointed") == []
    assert follows(servers["redis-e"], servers["redis-d"])


def test_regional_failover_promotes_the_backup_master_with_its_replica_kept(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_demo_shape(stack)
    loaded = load(make_config, tmp_path, servers)
    caught_up(servers)
    for name in ("redis-a", "redis-b", "redis-c"):  # the whole primary region
        servers[name].process.kill()
    wait_for(lambda: replication(servers["redis-d"])["master_link_status"] == "down", 10, "d's link down")

    ctx, recorder = make_context(loaded, CLUSTER, ALERT)
    refused = run(RedisFailover(), ctx)  # the plain alert never leaves the region
    assert refused.status == "refused", (refused, recorder.text())
    assert "no reachable replica in region primary" in refused.detail
    assert replication(servers["redis-d"])["role"] == "slave"

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, regional=True)
    started = time.monotonic()
    outcome = run(RedisFailover(), ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-d"
    assert replication(servers["redis-d"])["role"] == "master"
    assert follows(servers["redis-e"], servers["redis-d"])
    assert recorder.named("repointed") == [] and recorder.point_of_no_return_calls == 1
    assert servers["redis-d"].client().get("cascade:seed") == "1"
    print(f"\n[redis] regional failover to the backup master: {time.monotonic() - started:.3f}s")


def test_regional_failover_prefers_an_eligible_replica_of_the_old_region(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """A regional alert whose premise is false (a replica of the primary region still answers) does
    not move the data tier: the in-region replica wins even when the backup master is further ahead."""
    servers = start_demo_shape(stack, ("redis-a", "redis-b", "redis-d"))
    loaded = load(make_config, tmp_path, servers)
    caught_up(servers)
    servers["redis-b"].process.pause()
    try:
        pipe = servers["redis-a"].client().pipeline(transaction=False)
        for i in range(200):  # ~20 MB: more than the socket buffers hold for the paused replica
            pipe.set(f"ahead:{i}", "x" * 100_000)
        pipe.execute()
        offset = replication(servers["redis-a"])["master_repl_offset"]
        wait_for(lambda: replication(servers["redis-d"])["slave_repl_offset"] >= offset, 15, "d ahead")
        servers["redis-a"].process.kill()
    finally:
        servers["redis-b"].process.resume()
    wait_for(lambda: replication(servers["redis-b"])["master_link_status"] == "down", 10, "b's link down")
    assert (
        replication(servers["redis-b"])["slave_repl_offset"]
        < replication(servers["redis-d"])["slave_repl_offset"]
    )

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, regional=True)
    outcome = run(RedisFailover(), ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "redis-b", recorder.named("candidate")
    held = next(e for e in recorder.named("candidate") if e["target"] == "redis-d")
    assert held["eligible"].startswith("region failover (an eligible replica of region primary")
    assert follows(servers["redis-d"], servers["redis-b"])


def test_regional_failover_refuses_while_the_old_master_answers(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    servers = start_demo_shape(stack, ("redis-a", "redis-b", "redis-d"))
    loaded = load(make_config, tmp_path, servers)
    servers["redis-b"].process.kill()  # the region looks gone, but its master answers
    ctx, recorder = make_context(loaded, CLUSTER, ALERT, regional=True)
    outcome = run(RedisFailover(), ctx)
    assert outcome.status == "refused" and outcome.detail == "master redis-a still answers"
    assert recorder.point_of_no_return_calls == 0
    assert follows(servers["redis-d"], servers["redis-a"])


def test_regional_failover_refuses_while_the_backup_master_still_sees_the_old_master(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """The primary region looks gone to the recovery service (its in-region replica is dead, the
    master does not answer it) but the backup master still streams from the master: a witness, so a
    regional failover refuses too."""
    master = start_redis(stack, "redis-a", password=PASSWORD, extra_config=["repl-ping-replica-period 1"])
    in_region = start_redis(stack, "redis-b", password=PASSWORD, replica_of=master)
    backup = start_redis(stack, "redis-d", password=PASSWORD, replica_of=master)
    gate = Gate(master.port)
    try:
        backup.client().execute_command("REPLICAOF", "127.0.0.1", gate.port)
        wait_for(lambda: replication(backup)["master_link_status"] == "up", 15, "redis-d linked via the gate")
        in_region.process.kill()
        secret = tmp_path / "redis.pass"
        secret.write_text(PASSWORD + "\n")
        targets = [{"name": "redis-a", "region": "primary", "url": f"redis://127.0.0.1:{gate.port}"}]
        targets += [{"name": s.name, "region": REGIONS[s.name], "url": s.url} for s in (in_region, backup)]
        cluster = {"name": CLUSTER, "tier": "redis", "password_file": str(secret), "targets": targets}
        loaded = make_config([cluster])
        gate.cut_new()  # new connections (the recovery service's) fail; redis-d's link stays up

        ctx, recorder = make_context(loaded, CLUSTER, ALERT, regional=True)
        outcome = run(RedisFailover(), ctx)

        assert outcome.status == "refused", (outcome, recorder.text())
        assert outcome.detail == "master still seen by replica redis-d"
        assert recorder.named("master_checked")[0]["answers"] is False
        assert recorder.point_of_no_return_calls == 0
        assert replication(backup)["role"] == "slave"
    finally:
        gate.close()


# --- PostgreSQL: a cascading DR replica ------------------------------------------------------------


def streams_from(replica: PgServer, upstream: PgServer) -> bool:
    port = replica.scalar("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
    return port == upstream.port


def test_pg_failover_keeps_a_cascading_replica_under_its_upstream(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """pg-1 primary, pg-2 and pg-dr replicas of it, pg-dr2 cascading from pg-dr. pg-1 dies: pg-2 is
    promoted, pg-dr is re-pointed at it, pg-dr2 keeps streaming from pg-dr (and so gets pg-2's WAL)."""
    pg = start_pg_cluster(stack, ("pg-2", "pg-dr"))
    pg.servers["pg-dr2"] = start_replica(stack, pg.servers["pg-dr"], "pg-dr2")
    wait_for(lambda: streams_from(pg.servers["pg-dr2"], pg.servers["pg-dr"]), 30, "pg-dr2 cascading")
    entry = pg.cluster_entry("main-db")
    for target in entry["targets"]:
        target["region"] = "dr" if target["name"].startswith("pg-dr") else "main"
    loaded = make_config([entry])
    pg.servers["pg-1"].process.kill()

    settings = ClusterRecovery(admin_user="tierwatch_admin", admin_password_file=str(pg.admin_password_file))
    ctx, recorder = make_context(
        loaded, "main-db", {"alertname": "PostgresPrimaryDown", "target": "pg-1"}, settings=settings
    )
    outcome = run(PgPromote(), ctx)

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "pg-2"
    assert outcome.facts["cascaded"] == {"pg-dr2": "pg-dr"}
    assert [e["target"] for e in recorder.named("repointed")] == ["pg-dr"]
    assert streams_from(pg.servers["pg-dr"], pg.servers["pg-2"])
    assert streams_from(pg.servers["pg-dr2"], pg.servers["pg-dr"])
    pg.servers["pg-2"].sql("CREATE TABLE cascade_check (id int)")
    wait_for(
        lambda: pg.servers["pg-dr2"].scalar("SELECT to_regclass('cascade_check') IS NOT NULL"),
        30,
        "pg-2's WAL reaching pg-dr2 through pg-dr",
    )
