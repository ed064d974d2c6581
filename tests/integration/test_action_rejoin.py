"""redis_rejoin and pg_rejoin against real servers: a failover (the real action), then the old primary
comes back as a primary (restarted) and is demoted into a replica of the promoted one; refusals when
the topology is not the one the last failover left. The last failover's facts come from a real inbox
(Inbox.record_failover / last_failover, as the service keeps them)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery, RejoinCommands
from tierwatch.recovery.actions.base import ActionContext, Outcome
from tierwatch.recovery.actions.pg_promote import PgPromote
from tierwatch.recovery.actions.pg_rejoin import PgRejoin
from tierwatch.recovery.actions.redis_failover import RedisFailover
from tierwatch.recovery.actions.redis_rejoin import RedisRejoin
from tierwatch.recovery.inbox import Inbox
from tierwatch.recovery.lease import LeaseLost
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.postgres import OS_USER, REPLICATION_ROLE, pg_bin_dir
from tierwatch_lab.stack.redis import RedisServer, start_redis

from action_fixtures import ADMIN_ROLE, make_context, start_pg_cluster

PASSWORD = "redis-rejoin-secret-9d1e"
SPLIT = {"alertname": "RedisSplitBrain"}


def with_history(ctx: ActionContext, trail: Inbox) -> ActionContext:
    """``ctx`` reading the last failover from the inbox ``trail`` as the service does."""
    cluster = ctx.cluster.name
    return dataclasses.replace(ctx, last_failover=lambda: asyncio.to_thread(trail.last_failover, cluster))


def record_failover(trail: Inbox, cluster: str, new_primary: str, old_primary: str | None) -> None:
    """What the service keeps after a failover that promoted ``new_primary``."""
    trail.record_failover(f"alert-{new_primary}-{old_primary}", cluster, new_primary, old_primary)


def record_facts(trail: Inbox, cluster: str, outcome: Outcome) -> None:
    """What the service keeps of a real failover's outcome."""
    record_failover(trail, cluster, str(outcome.facts["new_primary"]), outcome.facts.get("old_primary"))


@pytest.fixture
def trail(tmp_path: Path) -> Any:
    inbox = Inbox(tmp_path / "inbox.sqlite3")
    yield inbox
    inbox.close()


def test_history_finds_the_last_promoting_failover_of_the_cluster(trail: Inbox) -> None:
    record_failover(trail, "a", "r-2", "r-1")
    record_failover(trail, "b", "x-2", "x-1")
    found = trail.last_failover("a")
    assert found is not None and (found["new_primary"], found["old_primary"]) == ("r-2", "r-1")
    record_failover(trail, "a", "r-1", "r-2")  # failed back later: the newest counts
    found = trail.last_failover("a")
    assert found is not None and (found["new_primary"], found["old_primary"]) == ("r-1", "r-2")
    assert trail.last_failover("c") is None


# --- Redis --------------------------------------------------------------------------------------


def redis_trio(stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path) -> Any:
    master = start_redis(stack, "redis-1", password=PASSWORD)
    replicas = [start_redis(stack, n, replica_of=master, password=PASSWORD) for n in ("redis-2", "redis-3")]
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    servers = [master, *replicas]
    targets = [{"name": s.name, "region": "main", "url": s.url} for s in servers]
    cluster = {"name": "cache", "tier": "redis", "password_file": str(secret), "targets": targets}
    return servers, make_config([cluster])


def role(server: RedisServer) -> str:
    return str(server.info("replication")["role"])


def fail_over_and_return(servers: list[RedisServer], loaded: LoadedConfig, trail: Inbox) -> None:
    """Kill redis-1, let the real failover promote a replica (audited), restart redis-1: it comes
    back as a master of its own with a write the others never saw."""
    master = servers[0]
    master.client().set("before", "1")
    master.client().execute_command("WAIT", 2, 5000)
    master.process.kill()
    ctx, recorder = make_context(loaded, "cache", {"alertname": "RedisMasterDown", "target": "redis-1"})
    outcome = asyncio.run(RedisFailover().run(ctx))
    assert outcome.status == "succeeded", (outcome, recorder.text())
    record_facts(trail, "cache", outcome)
    master.process.start()
    wait_for(lambda: role(master) == "master", 15, "redis-1 back")
    master.client().set("divergent", "1")  # accepted by the returning master only


def test_redis_returning_old_master_becomes_a_replica_of_the_promoted_one(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path, trail: Inbox
) -> None:
    servers, loaded = redis_trio(stack, make_config, tmp_path)
    fail_over_and_return(servers, loaded, trail)
    new = next(s for s in servers[1:] if role(s) == "master")
    assert [s.name for s in servers if role(s) == "master"] == ["redis-1", new.name]  # two masters

    ctx, recorder = make_context(loaded, "cache", SPLIT)
    outcome = asyncio.run(RedisRejoin().run(with_history(ctx, trail)))

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == new.name and outcome.facts["rejoined"] == ["redis-1"]
    assert recorder.point_of_no_return_calls == 1
    info = servers[0].info("replication")
    assert (info["role"], info["master_port"], info["master_link_status"]) == ("slave", new.port, "up")
    assert [s.name for s in servers if role(s) == "master"] == [new.name]
    wait_for(lambda: servers[0].client().get("before") == "1", 15, "redis-1 to resync")
    assert servers[0].client().get("divergent") is None  # dropped, as Sentinel's convert-to-slave
    assert PASSWORD not in recorder.text()

    # a second run (another alert) finds nothing to do and changes nothing
    ctx, recorder = make_context(loaded, "cache", SPLIT)
    again = asyncio.run(RedisRejoin().run(with_history(ctx, trail)))
    assert again.status == "refused" and "nothing to rejoin" in again.detail
    assert recorder.point_of_no_return_calls == 0


def lease_lost() -> None:
    """``ctx.still_leading`` of a leader whose lease expired after its point of no return."""
    raise LeaseLost("the lease expired in etcd")


def test_redis_rejoin_of_a_leader_that_lost_its_lease_changes_nothing_more(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path, trail: Inbox
) -> None:
    servers, loaded = redis_trio(stack, make_config, tmp_path)
    fail_over_and_return(servers, loaded, trail)
    ctx, recorder = make_context(loaded, "cache", SPLIT)
    ctx = dataclasses.replace(with_history(ctx, trail), still_leading=lease_lost)
    with pytest.raises(LeaseLost):
        asyncio.run(RedisRejoin().run(ctx))
    assert recorder.point_of_no_return_calls == 1 and not recorder.named("repointed"), recorder.text()
    assert role(servers[0]) == "master"  # left for the new leader, which resumes the run from the ledger


def test_redis_rejoin_refuses_an_unexpected_topology(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path, trail: Inbox
) -> None:
    servers, loaded = redis_trio(stack, make_config, tmp_path)
    # no recorded failover: nothing says which master is the right one
    servers[2].client().execute_command("REPLICAOF", "NO", "ONE")
    ctx, recorder = make_context(loaded, "cache", SPLIT)
    outcome = asyncio.run(RedisRejoin().run(with_history(ctx, trail)))
    assert outcome.status == "refused" and outcome.detail.startswith("no recorded failover")

    # the last failover promoted redis-2, which is not a master: neither master is the promoted one
    record_failover(trail, "cache", "redis-2", "redis-1")
    ctx, recorder = make_context(loaded, "cache", SPLIT)
    outcome = asyncio.run(RedisRejoin().run(with_history(ctx, trail)))
    assert outcome.status == "refused", outcome
    assert "redis-2, promoted by the last failover, is not a live master" in outcome.detail

    # it promoted redis-1 (a master) but the other master, redis-3, is not its old master
    record_failover(trail, "cache", "redis-1", "redis-2")
    ctx, recorder = make_context(loaded, "cache", SPLIT)
    outcome = asyncio.run(RedisRejoin().run(with_history(ctx, trail)))
    assert outcome.status == "refused" and "redis-3 also a master, not redis-2" in outcome.detail
    assert recorder.point_of_no_return_calls == 0
    assert role(servers[0]) == "master" and role(servers[2]) == "master"


# --- PostgreSQL -----------------------------------------------------------------------------------


def pg_ctl(data_dir: Path, *args: str) -> list[str]:
    return ["runuser", "-u", OS_USER, "--", str(pg_bin_dir() / "pg_ctl"), "-D", str(data_dir), *args]


def test_pg_returning_old_primary_is_rewound_and_follows_the_promoted_one(
    stack: Stack, make_config: Callable[..., LoadedConfig], trail: Inbox
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
    old = pg.servers["pg-1"]
    old.sql("ALTER SYSTEM SET wal_log_hints = on")  # pg_rewind needs it (or data checksums)
    old.process.stop()
    old.process.start()
    old.wait_ready()
    for name in ("pg-2", "pg-3"):
        pg.servers[name].wait_streaming()
    # pg_rewind reads the new primary's files: the replication role may (replicated to every server)
    for fn in (
        "pg_ls_dir(text, boolean, boolean)",
        "pg_stat_file(text, boolean)",
        "pg_read_binary_file(text)",
        "pg_read_binary_file(text, bigint, bigint, boolean)",
    ):
        old.sql(f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {REPLICATION_ROLE}")
    old.sql(f"GRANT pg_checkpoint TO {ADMIN_ROLE}")  # pg_rejoin checkpoints the new primary first
    passfile = conninfo_to_dict(str(pg.servers["pg-2"].scalar("SHOW primary_conninfo")))["passfile"]
    old.sql("CREATE TABLE acked (id int PRIMARY KEY)")
    old.sql("INSERT INTO acked SELECT generate_series(1, 100)")
    for name in ("pg-2", "pg-3"):
        pg.servers[name].wait_caught_up()

    loaded = make_config([pg.cluster_entry("main-db")])
    admin = {"admin_user": ADMIN_ROLE, "admin_password_file": str(pg.admin_password_file)}
    old.process.kill()
    ctx, recorder = make_context(
        loaded,
        "main-db",
        {"alertname": "PostgresPrimaryDown", "target": "pg-1"},
        settings=ClusterRecovery(**admin),
    )
    promoted = asyncio.run(PgPromote().run(ctx))
    assert promoted.status == "succeeded", (promoted, recorder.text())
    record_facts(trail, "main-db", promoted)
    new = pg.servers[promoted.facts["new_primary"]]

    old.process.start()  # the old primary returns, crash-recovers and accepts writes of its own
    old.wait_ready()
    assert not old.in_recovery()
    old.sql("INSERT INTO acked VALUES (1000)")  # divergent: never acknowledged by a standby

    source = (
        f"host={{primary_host}} port={{primary_port}} user={REPLICATION_ROLE} passfile={passfile} "
        "dbname=postgres application_name=pg-1"
    )
    pg_rewind = str(pg_bin_dir() / "pg_rewind")
    commands = RejoinCommands(
        stop=pg_ctl(old.data_dir, "stop", "-m", "fast", "-w"),
        rewind=[
            "runuser",
            "-u",
            OS_USER,
            "--",
            pg_rewind,
            "-D",
            str(old.data_dir),
            "--source-server",
            source,
            "-R",
        ],
        start=pg_ctl(
            old.data_dir,
            "start",
            "-w",
            "-l",
            str(old.socket_dir / "rejoined.log"),
            # the lab keeps each server's port in its data directory, which pg_rewind overwrote
            "-o",
            f"-c port={old.port} -c unix_socket_directories={old.socket_dir}",
        ),
    )
    settings = ClusterRecovery(**admin, rejoin_commands={"pg-1": commands})
    try:
        ctx, recorder = make_context(
            loaded, "main-db", {"alertname": "PostgresSplitBrain"}, settings=settings
        )
        outcome = asyncio.run(PgRejoin().run(with_history(ctx, trail)))
        assert outcome.status == "succeeded", (outcome, recorder.text())
        steps = [(e["step"], e["exit_code"]) for e in recorder.named("command_finished")]
        assert steps == [("stop", 0), ("rewind", 0), ("start", 0)]
        assert old.in_recovery()
        streaming = (
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pg-1' AND state = 'streaming'"
        )
        wait_for(lambda: new.scalar(streaming) == 1, 30, "pg-1 to stream from the new primary")
        new.sql("INSERT INTO acked VALUES (2000)")
        wait_for(lambda: old.scalar("SELECT count(*) FROM acked WHERE id = 2000") == 1, 30, "pg-1 to replay")
        assert old.scalar("SELECT count(*) FROM acked WHERE id <= 100") == 100
        assert old.scalar("SELECT count(*) FROM acked WHERE id = 1000") == 0  # rewound away
        assert not any(s.in_recovery() is False for n, s in pg.servers.items() if n != new.name)
    finally:
        subprocess.run(pg_ctl(old.data_dir, "stop", "-m", "immediate"), capture_output=True, timeout=30)


def test_pg_rejoin_without_commands_is_refused(
    stack: Stack, make_config: Callable[..., LoadedConfig], trail: Inbox
) -> None:
    pg = start_pg_cluster(stack, ("pg-2",))
    pg.servers["pg-2"].promote()  # a second primary
    record_failover(trail, "main-db", "pg-2", "pg-1")
    loaded = make_config([pg.cluster_entry("main-db")])
    ctx, recorder = make_context(loaded, "main-db", {"alertname": "PostgresSplitBrain"})
    outcome = asyncio.run(PgRejoin().run(with_history(ctx, trail)))
    assert outcome.status == "refused" and outcome.detail == "no rejoin commands configured for pg-1"
    assert recorder.point_of_no_return_calls == 0
    assert not pg.servers["pg-1"].in_recovery()


def test_pg_rejoin_of_a_leader_that_loses_its_lease_runs_no_further_step(
    stack: Stack, make_config: Callable[..., LoadedConfig], trail: Inbox, tmp_path: Path
) -> None:
    """The lease is lost while the stop command runs: rewind and start are the new leader's (two
    leaders rewinding one data directory at once would corrupt it)."""
    pg = start_pg_cluster(stack, ("pg-2",))
    pg.servers["pg-1"].sql(f"GRANT pg_checkpoint TO {ADMIN_ROLE}")
    pg.servers["pg-2"].wait_caught_up()
    pg.servers["pg-2"].promote()  # a second primary
    record_failover(trail, "main-db", "pg-2", "pg-1")
    loaded = make_config([pg.cluster_entry("main-db")])
    ran = tmp_path / "ran"
    ran.mkdir()
    commands = RejoinCommands(**{step: ["touch", str(ran / step)] for step in ("stop", "rewind", "start")})
    admin = {"admin_user": ADMIN_ROLE, "admin_password_file": str(pg.admin_password_file)}
    settings = ClusterRecovery(**admin, rejoin_commands={"pg-1": commands})
    ctx, recorder = make_context(loaded, "main-db", {"alertname": "PostgresSplitBrain"}, settings=settings)

    def still_leading() -> None:
        if (ran / "stop").exists():
            lease_lost()

    ctx = dataclasses.replace(with_history(ctx, trail), still_leading=still_leading)
    with pytest.raises(LeaseLost):
        asyncio.run(PgRejoin().run(ctx))
    assert sorted(p.name for p in ran.iterdir()) == ["stop"], recorder.text()
    assert [e["step"] for e in recorder.named("command_finished")] == ["stop"]
