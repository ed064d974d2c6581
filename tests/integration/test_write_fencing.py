"""Write fencing as the probes see it, on real servers: Redis min-replicas-to-write/min-replicas-max-lag
on a master (INFO, and CONFIG GET where the monitoring user may), and PostgreSQL's synchronous standbys
on a primary."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis

from tierwatch.probes.base import Observation, TargetInfo
from tierwatch.probes.postgres import synchronous_standbys_required
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.redis import RedisServer, start_redis, wait_writes_accepted

from pg_fixtures import PgCluster, pg_pair, probe_until
from redis_fixtures import make_cluster, poll, probe_once, redis_stack, target_info, value

__all__ = ["pg_pair", "redis_stack"]

FENCING = ("min-replicas-to-write 1", "min-replicas-max-lag 10")


@pytest.fixture
def fenced_pair(redis_stack: Stack) -> Iterator[tuple[RedisServer, RedisServer]]:
    master = start_redis(redis_stack, "redis-1", extra_config=FENCING)
    replica = start_redis(redis_stack, "redis-2", replica_of=master, extra_config=FENCING)
    wait_writes_accepted(master)
    yield master, replica


def fencing(obs: Observation) -> dict[str, float | None]:
    return {
        name: value(obs, f"tierwatch_redis_{name}")
        for name in (
            "write_fencing",
            "min_replicas_good",
            "min_replicas_to_write",
            "min_replicas_max_lag_seconds",
        )
    }


def test_redis_master_with_fencing_reports_its_settings_and_good_replicas(
    fenced_pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = fenced_pair
    cluster = make_cluster([master, replica])
    obs = probe_once(target_info(cluster, "redis-1"))
    assert obs.role == "primary"
    assert fencing(obs) == {
        "write_fencing": 1.0,
        "min_replicas_good": 1.0,
        "min_replicas_to_write": 1.0,
        "min_replicas_max_lag_seconds": 10.0,
    }
    # the fencing settings mean nothing on a replica: it reports none of them
    assert set(fencing(probe_once(target_info(cluster, "redis-2"))).values()) == {None}


def test_redis_master_without_a_good_replica_refuses_writes_and_says_so(redis_stack: Stack) -> None:
    master = start_redis(redis_stack, "redis-1", extra_config=FENCING)
    obs = probe_once(target_info(make_cluster([master]), "redis-1"))
    assert fencing(obs) == {
        "write_fencing": 1.0,
        "min_replicas_good": 0.0,
        "min_replicas_to_write": 1.0,
        "min_replicas_max_lag_seconds": 10.0,
    }
    client = master.client()
    try:
        with pytest.raises(Exception, match="NOREPLICAS"):
            client.set("k", "v")
    finally:
        client.close()


def test_redis_master_without_fencing_reports_it_off(redis_stack: Stack) -> None:
    master = start_redis(redis_stack, "redis-1")
    replica = start_redis(redis_stack, "redis-2", replica_of=master)
    obs = probe_once(target_info(make_cluster([master, replica]), "redis-1"))
    assert fencing(obs) == {
        "write_fencing": 0.0,
        "min_replicas_good": None,  # INFO has min_slaves_good_slaves only while fencing is on
        "min_replicas_to_write": 0.0,
        "min_replicas_max_lag_seconds": 10.0,  # Redis's default; fencing needs both
    }


def test_redis_fencing_turned_on_at_runtime_is_seen_by_the_next_probe(redis_stack: Stack) -> None:
    master = start_redis(redis_stack, "redis-1")
    info = target_info(make_cluster([master]), "redis-1")
    client = master.client()

    async def run() -> tuple[Observation, Observation]:
        probe = RedisProbe(info)
        try:
            before = await probe.probe()
            client.config_set("min-replicas-to-write", 2)
            return before, await probe.probe()
        finally:
            await probe.close()

    try:
        before, after = asyncio.run(run())
    finally:
        client.close()
    assert (fencing(before)["write_fencing"], fencing(before)["min_replicas_to_write"]) == (0.0, 0.0)
    assert fencing(after) == {
        "write_fencing": 1.0,
        "min_replicas_good": 0.0,
        "min_replicas_to_write": 2.0,
        "min_replicas_max_lag_seconds": 10.0,
    }


def test_redis_monitoring_user_without_config_still_sees_fencing_from_info(
    fenced_pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = fenced_pair
    admin = master.client()
    try:
        admin.execute_command("ACL", "SETUSER", "monitor", "on", ">monitor-pw", "+@all", "-config", "~*")
    finally:
        admin.close()
    cluster = make_cluster([master, replica])
    default = target_info(cluster, "redis-1", password="monitor-pw")
    target = default.target.model_copy(
        update={"url": default.target.url.replace("redis://", "redis://monitor@")}
    )
    info = TargetInfo(tier="redis", cluster=cluster, target=target, password=default.password, timeout=2.0)
    commands_before = _config_calls(master)

    async def run() -> tuple[list[Observation], bool]:
        probe = RedisProbe(info)
        try:
            return [await probe.probe() for _ in range(3)], probe.config_refused
        finally:
            await probe.close()

    observations, refused = asyncio.run(run())
    assert refused
    for obs in observations:
        assert fencing(obs) == {
            "write_fencing": 1.0,
            "min_replicas_good": 1.0,
            "min_replicas_to_write": None,
            "min_replicas_max_lag_seconds": None,
        }
    # refused in the first round trip (the min-replicas settings and `save`), then not asked again
    assert _config_calls(master) - commands_before == 2


def _config_calls(server: RedisServer) -> int:
    """CONFIG GET calls the server has seen, refused ones included."""
    stats = server.info("commandstats").get("cmdstat_config|get", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


# ---- PostgreSQL: synchronous standbys on the primary ----


def pg_sync(obs: Observation) -> dict[str, float | None]:
    return {
        name: value(obs, f"tierwatch_pg_{name}")
        for name in (
            "synchronous_standbys_configured",
            "synchronous_standbys_streaming",
            "synchronous_commit_local",
        )
    }


@pytest.mark.parametrize(
    ("names", "required"),
    [("", 0), ("  ", 0), ("pg-2", 1), ("pg-2, pg-3", 1), ("*", 1), ("2 (a, b, c)", 2),
     ("FIRST 2 (a, b)", 2), ('ANY 1 ("pg-1", "pg-2")', 1), ("any 3(a,b,c)", 3)],
)  # fmt: skip
def test_synchronous_standbys_required_follows_the_setting_syntax(names: str, required: int) -> None:
    assert synchronous_standbys_required(names) == required


def test_pg_primary_reports_synchronous_standbys_off_then_on(pg_pair: PgCluster) -> None:
    primary = pg_pair.servers["pg-1"]
    pg_pair.servers["pg-2"].wait_streaming()

    async def probe_primary(condition: Callable[[Observation], bool], what: str) -> Observation:
        probe = pg_pair.probe("pg-1")
        try:
            return await probe_until(probe, condition, 20, what)
        finally:
            await probe.close()

    obs = asyncio.run(probe_primary(lambda o: o.role == "primary", "the primary"))
    assert pg_sync(obs) == {
        "synchronous_standbys_configured": 0.0,
        "synchronous_standbys_streaming": 0.0,
        "synchronous_commit_local": 0.0,
    }

    primary.sql("""ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ("pg-2", "pg-3")'""")
    primary.sql("SELECT pg_reload_conf()")
    obs = asyncio.run(
        probe_primary(lambda o: pg_sync(o)["synchronous_standbys_streaming"] == 1, "pg-2 streaming as quorum")
    )
    assert pg_sync(obs) == {
        "synchronous_standbys_configured": 1.0,
        "synchronous_standbys_streaming": 1.0,
        "synchronous_commit_local": 0.0,
    }
    # the replica reports none of it
    replica = asyncio.run(probe_replica(pg_pair))
    assert set(pg_sync(replica).values()) == {None}

    primary.sql("ALTER SYSTEM SET synchronous_commit = 'local'")
    primary.sql("SELECT pg_reload_conf()")
    obs = asyncio.run(probe_primary(lambda o: pg_sync(o)["synchronous_commit_local"] == 1, "commit local"))
    assert pg_sync(obs)["synchronous_standbys_configured"] == 1.0

    pg_pair.servers["pg-2"].stop()
    obs = asyncio.run(probe_primary(lambda o: pg_sync(o)["synchronous_standbys_streaming"] == 0, "pg-2 gone"))
    assert pg_sync(obs)["synchronous_standbys_configured"] == 1.0


async def probe_replica(cluster: PgCluster) -> Observation:
    probe = cluster.probe("pg-2")
    try:
        return await probe.probe()
    finally:
        await probe.close()


def test_redis_master_cut_off_from_its_replica_stops_acknowledging_writes(redis_stack: Stack) -> None:
    """The fence at work: the replica paused (SIGSTOP) past min-replicas-max-lag, the master refuses
    writes and the probe says 0 good replicas; resumed, both come back."""
    fencing_1s = ("min-replicas-to-write 1", "min-replicas-max-lag 1")
    master = start_redis(redis_stack, "redis-1", extra_config=fencing_1s)
    replica = start_redis(redis_stack, "redis-2", replica_of=master, extra_config=fencing_1s)
    wait_writes_accepted(master)
    info = target_info(make_cluster([master, replica]), "redis-1")
    client = master.client()

    def accepts_writes() -> bool:
        try:
            return bool(client.set("fenced", "1"))
        except redis.ResponseError as exc:
            assert "NOREPLICAS" in str(exc)
            return False

    assert accepts_writes()
    replica.process.pause()
    try:
        poll(lambda: not accepts_writes(), 10, "the master refusing writes")
        assert fencing(probe_once(info))["min_replicas_good"] == 0.0
    finally:
        replica.process.resume()
    poll(accepts_writes, 10, "the master accepting writes again")
    assert fencing(probe_once(info))["min_replicas_good"] == 1.0
