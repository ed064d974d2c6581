"""Replicas as witnesses (real Redis and PostgreSQL): when only the recovery service is cut off from
the primary (its replicas still stream from it), the failover is refused ("still seen by replica");
when the primary really dies behind the same address, the failover goes ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.pg_promote import PgPromote
from tierwatch.recovery.actions.redis_failover import RedisFailover
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.redis import RedisServer, start_redis

from action_fixtures import ADMIN_ROLE, make_context, start_pg_cluster
from partition_fixtures import Gate, gates

__all__ = ["gates"]  # a fixture: imported to be used by name

PASSWORD = "redis-witness-secret-41c2"


def _redis_follow(replica: RedisServer, port: int) -> None:
    replica.client().execute_command("REPLICAOF", "127.0.0.1", port)
    wait_for(
        lambda: replica.info("replication").get("master_link_status") == "up", 15, f"{replica.name} linked"
    )


def test_redis_refuses_while_a_replica_still_sees_the_master_then_fails_over_when_it_dies(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path, gates: list[Gate]
) -> None:
    master = start_redis(stack, "redis-1", password=PASSWORD, extra_config=["repl-ping-replica-period 1"])
    replicas = [start_redis(stack, n, replica_of=master, password=PASSWORD) for n in ("redis-2", "redis-3")]
    gate = Gate(master.port)
    gates.append(gate)
    for replica in replicas:
        _redis_follow(replica, gate.port)  # the replicas reach the master through its config address
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    targets = [{"name": "redis-1", "region": "main", "url": f"redis://127.0.0.1:{gate.port}"}]
    targets += [{"name": r.name, "region": "main", "url": r.url} for r in replicas]
    cluster = {"name": "cache", "tier": "redis", "password_file": str(secret), "targets": targets}
    loaded = make_config([cluster])
    alert = {"alertname": "RedisMasterDown", "target": "redis-1"}

    gate.cut_new()  # the watcher (this process) is cut off from the master; its replicas are not
    ctx, recorder = make_context(loaded, "cache", alert)
    outcome = asyncio.run(RedisFailover().run(ctx))
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.detail == "master still seen by replica redis-2, redis-3"
    assert recorder.point_of_no_return_calls == 0
    assert recorder.named("master_checked")[0]["answers"] is False  # the liveness check alone would act
    assert master.info("replication")["role"] == "master"
    assert all(r.info("replication")["role"] == "slave" for r in replicas)

    master.process.kill()  # now it is really gone: the links drop, no witness remains
    for replica in replicas:
        wait_for(
            lambda r=replica: r.info("replication").get("master_link_status") == "down",
            15,
            f"{replica.name} to lose its master",
        )
    ctx, recorder = make_context(loaded, "cache", alert)
    outcome = asyncio.run(RedisFailover().run(ctx))
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert recorder.named("witnesses_checked")[0]["seen_by"] == {}


def _pg_follow(server: Any, port: int) -> None:
    conninfo = str(server.scalar("SHOW primary_conninfo"))
    params = {**conninfo_to_dict(conninfo), "port": str(port)}
    server.sql(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(make_conninfo(**params))))
    server.sql("SELECT pg_reload_conf()")


def test_pg_refuses_while_a_replica_still_streams_from_the_primary_then_promotes_when_it_dies(
    stack: Stack, make_config: Callable[..., LoadedConfig], gates: list[Gate]
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
    primary = pg.servers["pg-1"]
    primary.sql("ALTER SYSTEM SET wal_sender_timeout = '2s'")  # an idle sender's keepalive every 1 s
    primary.sql("SELECT pg_reload_conf()")
    gate = Gate(primary.port)
    gates.append(gate)
    for name in ("pg-2", "pg-3"):
        _pg_follow(pg.servers[name], gate.port)

    def via_gate() -> bool:
        rows = primary.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        return gate.accepted >= 2 and rows[0][0] == 2

    wait_for(via_gate, 30, "both replicas to stream through the gate")
    entry = pg.cluster_entry("main-db")
    entry["targets"][0]["url"] = f"postgresql://tierwatch@127.0.0.1:{gate.port}/postgres"
    loaded = make_config([entry])
    settings = ClusterRecovery(admin_user=ADMIN_ROLE, admin_password_file=str(pg.admin_password_file))
    alert = {"alertname": "PostgresPrimaryDown", "target": "pg-1"}

    gate.cut_new()
    ctx, recorder = make_context(loaded, "main-db", alert, settings=settings)
    outcome = asyncio.run(PgPromote().run(ctx))
    assert outcome.status == "refused", (outcome, recorder.text())
    assert outcome.detail == "primary still seen by replica pg-2, pg-3"
    assert recorder.point_of_no_return_calls == 0
    assert not primary.in_recovery()
    assert pg.servers["pg-2"].in_recovery() and pg.servers["pg-3"].in_recovery()

    primary.process.kill()
    for name in ("pg-2", "pg-3"):
        wait_for(
            lambda n=name: (
                pg.servers[n].scalar("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
                == 0
            ),
            30,
            f"{name} to lose its primary",
        )
    ctx, recorder = make_context(loaded, "main-db", alert, settings=settings)
    outcome = asyncio.run(PgPromote().run(ctx))
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert recorder.named("witnesses_checked")[0]["seen_by"] == {}
