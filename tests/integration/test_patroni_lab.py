"""The lab's Patroni cluster (tierwatch_lab.stack.patroni): real Patroni over a real etcd, managing
real PostgreSQL servers. It bootstraps one leader with streaming replicas, elects another member when
the leader dies, and the dead member, started again, follows the new leader."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from patroni_fixtures import (  # noqa: F401 - fixtures
    patroni_cluster_config,
    patroni_cluster_module,
    start_test_cluster,
)

from tierwatch.config import ClusterConfig
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.patroni import PatroniCluster, PatroniMember
from tierwatch_lab.stack.process import wait_for


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _streaming_names(leader: PatroniMember) -> set[str]:
    with leader.connect() as conn:
        rows = conn.execute("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        return {row[0] for row in rows.fetchall()}


def test_bootstrap_one_leader_and_streaming_replicas(patroni_cluster_module: PatroniCluster) -> None:  # noqa: F811
    cluster = patroni_cluster_module
    leader = cluster.wait_leader(30)
    doc = cluster.status()
    assert doc is not None and doc["scope"] == "main-db"
    roles = sorted(entry["role"] for entry in doc["members"])
    assert roles == ["leader", "replica", "replica"]
    replicas = [m for m in cluster.members if m is not leader]
    assert _streaming_names(leader) == {m.name for m in replicas}
    assert all(m.in_recovery() for m in replicas) and not leader.in_recovery()
    # the leader answers Patroni's /primary health check, the replicas do not (what HAProxy checks)
    assert leader.rest("/primary")[0] == 200
    assert all(m.rest("/primary")[0] == 503 for m in replicas)

    with leader.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS boot (v int)")
        conn.execute("INSERT INTO boot VALUES (1)")
    for replica in replicas:
        wait_for(lambda r=replica: r.scalar("SELECT count(*) FROM boot") == 1, 30, f"{replica.name} replays")


def test_monitor_role_and_config_entry(patroni_cluster_module: PatroniCluster) -> None:  # noqa: F811
    cluster = patroni_cluster_module
    entry = patroni_cluster_config(cluster)
    parsed = ClusterConfig.model_validate(entry)
    assert parsed.patroni is not None and parsed.patroni.scope == cluster.scope
    assert [m.target for m in parsed.patroni.members] == [t.name for t in parsed.targets]
    password = Path(entry["password_file"]).read_text().strip()
    assert oct(os.stat(entry["password_file"]).st_mode & 0o777) == "0o600"
    for member in cluster.members:  # the exporter's role logs in over TCP with its password only
        with psycopg.connect(member.url(password=password), connect_timeout=5) as conn:
            assert conn.execute("SELECT pg_has_role('pg_monitor', 'member')").fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(member.url(password="wrong"), connect_timeout=5).close()
    admin = cluster.member(cluster.wait_leader(30).name)
    with psycopg.connect(admin.url(cluster.admin_role, cluster.admin_password), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cluster.admin_role,)


def test_pause_freezes_patroni_and_postgres(patroni_cluster_module: PatroniCluster) -> None:  # noqa: F811
    cluster = patroni_cluster_module
    leader = cluster.wait_leader(30)
    replica = next(m for m in cluster.members if m is not leader)
    replica.pause()
    try:
        with pytest.raises(httpx.TimeoutException):
            replica.rest("/patroni", timeout=1.0)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(replica.url(password=cluster.monitor_password), connect_timeout=2).close()
    finally:
        replica.resume()
    assert replica.rest("/patroni")[1]["state"] in {"running", "streaming"}
    cluster.wait_streaming(timeout=60)


def test_dead_leader_replaced_and_returns_as_replica() -> None:
    with Stack() as stack:
        cluster = start_test_cluster(stack)
        old = cluster.wait_leader(30)
        with old.connect() as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1)")
        for member in cluster.members:
            if member is not old:
                wait_for(lambda m=member: m.scalar("SELECT count(*) FROM t") == 1, 30, "replicated")
        assert old.process is not None
        pids = old.process.postgres_pids()
        assert pids, "the leader's postgres runs"

        started = time.monotonic()
        old.kill()
        assert not old.running()
        assert not [p for p in pids if _alive(p)], "no postgres of the dead node left"
        new = cluster.wait_leader(90, not_=old)
        elected = time.monotonic() - started
        ttl = cluster.timing["ttl"]
        print(f"election after SIGKILL of {old.name}: {new.name} in {elected:.1f}s (ttl {ttl})")
        assert new.name != old.name
        with new.connect() as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
            conn.execute("INSERT INTO t VALUES (2)")

        cluster.start_member(old)
        cluster.wait_streaming([old.name], timeout=120)
        assert old.in_recovery()
        assert old.name in _streaming_names(new)
        wait_for(lambda: old.scalar("SELECT count(*) FROM t") == 2, 30, f"{old.name} replays the new leader")
        assert cluster.leader() is new
        doc = cluster.status()
        assert doc is not None
        assert {e["name"]: e["timeline"] for e in doc["members"]}[new.name] >= 2, "a new timeline"
        all_pids = [p for m in cluster.members if m.process for p in m.process.postgres_pids()]
        patroni_pids = [m.process.pid for m in cluster.members if m.process]
    # the Stack stopped Patroni and every postgres it started
    assert not [pid for pid in [*all_pids, *patroni_pids] if _alive(pid)]
