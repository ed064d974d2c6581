"""RedisProbe against real redis-server processes."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback

import pytest

from tierwatch.config import ClusterConfig, TargetConfig
from tierwatch.probes.base import Observation, ProbeFailure
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.stack import Stack, free_port
from tierwatch_lab.stack.redis import start_redis

from redis_fixtures import (
    elapsed,
    failure_of,
    make_cluster,
    normal_clients,
    open_fds,
    peer_value,
    poll,
    probe_once,
    redis_stack,
    target_info,
    value,
)

__all__ = ["redis_stack"]  # the fixture, imported for pytest

LAG = "tierwatch_replication_lag_bytes"


def test_primary_reports_replicas_lag_on_their_own_targets(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    b = start_redis(redis_stack, "redis-b", replica_of=a)
    c = start_redis(redis_stack, "redis-c", replica_of=a)
    cluster = make_cluster([a, b, c])
    a.client().set("k", "v")
    primary = probe_once(target_info(cluster, "redis-a"))
    assert primary.role == "primary"
    assert value(primary, "tierwatch_redis_connected_replicas") == 2
    assert value(primary, "tierwatch_redis_unknown_replicas") == 0
    assert set(primary.peer_samples) == {"redis-b", "redis-c"}
    for peer in ("redis-b", "redis-c"):
        assert peer_value(primary, peer, LAG) is not None
        assert peer_value(primary, peer, "tierwatch_replication_lag_seconds") is not None
    offset = poll(lambda: int(b.info("replication")["slave_repl_offset"]), 10, "redis-b to replicate")
    replica = probe_once(target_info(cluster, "redis-b"))
    assert replica.role == "replica"
    assert value(replica, "tierwatch_redis_master_link_up") == 1
    assert value(replica, "tierwatch_redis_master_sync_in_progress") == 0
    assert value(replica, "tierwatch_redis_master_last_io_seconds") is not None
    assert value(replica, "tierwatch_redis_replication_offset_bytes") >= offset  # type: ignore[operator]
    assert replica.peer_samples == {}


def test_replica_unknown_to_config_is_counted_not_labelled(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    start_redis(redis_stack, "redis-x", replica_of=a)
    obs = probe_once(target_info(make_cluster([a]), "redis-a"))
    assert value(obs, "tierwatch_redis_connected_replicas") == 1
    assert value(obs, "tierwatch_redis_unknown_replicas") == 1
    assert obs.peer_samples == {}


class _WriteLoad:
    """Writes to a server from a thread until stopped."""

    def __init__(self, client: object) -> None:
        self.client = client
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            self.client.set(f"load:{i % 1000}", "x" * 100)  # type: ignore[attr-defined]
            i += 1

    def __enter__(self) -> _WriteLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_lag_rises_while_replica_is_stopped_and_returns_to_zero(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    b = start_redis(redis_stack, "redis-b", replica_of=a)
    cluster = make_cluster([a, b])

    async def run() -> None:
        probe = RedisProbe(target_info(cluster, "redis-a"))

        async def lag() -> float:
            obs = await probe.probe()
            return peer_value(obs, "redis-b", LAG) or 0.0

        try:
            with _WriteLoad(a.client()):
                b.process.pause()
                try:
                    deadline = time.monotonic() + 20
                    while (current := await lag()) <= 0:
                        assert time.monotonic() < deadline, "lag never rose above zero"
                        await asyncio.sleep(0.1)
                    assert current > 0
                finally:
                    b.process.resume()
            deadline = time.monotonic() + 20
            while (current := await lag()) != 0:
                assert time.monotonic() < deadline, f"lag stayed at {current} bytes after SIGCONT"
                await asyncio.sleep(0.1)
            assert probe.link.connects == 1
        finally:
            await probe.close()

    asyncio.run(run())


def test_roles_flip_after_replicaof_no_one_and_two_primaries_show(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    b = start_redis(redis_stack, "redis-b", replica_of=a)
    cluster = make_cluster([a, b])
    assert probe_once(target_info(cluster, "redis-b")).role == "replica"
    b.client().replicaof("NO", "ONE")
    roles = {name: probe_once(target_info(cluster, name)).role for name in ("redis-a", "redis-b")}
    assert roles == {"redis-a": "primary", "redis-b": "primary"}
    b.client().replicaof(a.host, a.port)
    poll(lambda: probe_once(target_info(cluster, "redis-b")).role == "replica", 10, "redis-b to be a replica")


def test_replica_reports_link_down_when_master_dies(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    b = start_redis(redis_stack, "redis-b", replica_of=a)
    cluster = make_cluster([a, b])
    a.process.kill()
    obs = poll(
        lambda: (
            (o := probe_once(target_info(cluster, "redis-b")))
            and value(o, "tierwatch_redis_master_link_up") == 0
            and o
        ),
        10,
        "redis-b to see its master link down",
    )
    assert obs.role == "replica"


def test_cache_counters_equal_info(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    client = a.client()
    for i in range(7):
        client.set(f"k{i}", i)
    for i in range(12):
        client.get(f"k{i}")  # 7 hits, 5 misses
    client.set("short", 1, px=1)
    poll(lambda: client.get("short") is None, 5, "the short-lived key to expire")
    obs = probe_once(target_info(make_cluster([a]), "redis-a"))
    stats = a.info("stats")
    assert value(obs, "tierwatch_cache_hits_total") == stats["keyspace_hits"] >= 7
    assert value(obs, "tierwatch_cache_misses_total") == stats["keyspace_misses"] >= 5
    assert value(obs, "tierwatch_redis_expired_keys_total") == stats["expired_keys"] >= 1
    assert value(obs, "tierwatch_redis_evicted_keys_total") == stats["evicted_keys"]
    assert value(obs, "tierwatch_redis_rejected_connections_total") == stats["rejected_connections"]
    memory = a.info("memory")
    assert value(obs, "tierwatch_redis_memory_max_bytes") == memory["maxmemory"]
    assert value(obs, "tierwatch_redis_memory_used_bytes") > 0  # type: ignore[operator]
    assert value(obs, "tierwatch_redis_memory_rss_bytes") > 0  # type: ignore[operator]
    ratio = value(obs, "tierwatch_redis_memory_fragmentation_ratio")
    assert ratio == pytest.approx(memory["mem_fragmentation_ratio"], rel=0.5)  # both move between reads
    assert value(obs, "tierwatch_redis_max_clients") == a.info("clients")["maxclients"]
    assert value(obs, "tierwatch_redis_rdb_last_bgsave_ok") == 1
    assert value(obs, "tierwatch_redis_aof_last_write_ok") is None  # AOF is off
    assert value(obs, "tierwatch_redis_uptime_seconds") is not None


def test_aof_status_reported_where_enabled(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a", extra_config=["appendonly yes"])
    obs = probe_once(target_info(make_cluster([a]), "redis-a"))
    assert value(obs, "tierwatch_redis_aof_last_write_ok") == 1


def test_connection_is_reused_across_probes(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    info = target_info(make_cluster([a]), "redis-a")
    before = a.info("stats")["total_connections_received"]

    async def run() -> None:
        probe = RedisProbe(info)
        try:
            for _ in range(20):
                await probe.probe()
            with a.client() as client:
                names = [c["name"] for c in client.client_list(_type="normal")]
            assert names.count("tierwatch") == 1
        finally:
            await probe.close()

    asyncio.run(run())
    # one for the probe; the INFO and CLIENT LIST clients of this test account for the rest
    assert a.info("stats")["total_connections_received"] - before == 3
    poll(lambda: normal_clients(a) == 0, 5, "the probe's connection to close")


def test_dead_target_is_refused(redis_stack: Stack) -> None:
    port = free_port()
    cluster = ClusterConfig(
        name="dead",
        tier="redis",
        targets=[TargetConfig(name="redis-dead", region="primary", url=f"redis://127.0.0.1:{port}")],
    )
    start = time.monotonic()
    failure = failure_of(target_info(cluster, "redis-dead"))
    assert failure.reason == "refused"
    assert elapsed(start) < 2


def test_hanging_target_times_out_within_deadline_and_leaks_nothing(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    info = target_info(make_cluster([a]), "redis-a", timeout=0.5)

    async def run() -> None:
        probe = RedisProbe(info)
        baseline = open_fds()
        await probe.probe()
        assert open_fds() == baseline + 1
        a.process.pause()
        try:
            for _ in range(3):  # the first on the open connection, then fresh connects
                start = time.monotonic()
                try:
                    await probe.probe()
                    raise AssertionError("a stopped server answered")
                except ProbeFailure as exc:
                    assert exc.reason == "timeout"
                assert elapsed(start) < info.timeout + 0.3
                await probe.reset()
                await fds_settle(baseline)
        finally:
            a.process.resume()
        await probe.probe()
        assert open_fds() == baseline + 1
        await probe.close()
        await fds_settle(baseline)

    asyncio.run(run())
    poll(lambda: normal_clients(a) == 0, 10, "the server to drop every probe connection")


async def fds_settle(expected: int, timeout: float = 2.0) -> None:
    """Let the event loop run until this process has ``expected`` open fds (a closed transport
    releases its socket on the next loop iteration)."""
    deadline = time.monotonic() + timeout
    while open_fds() != expected:
        assert time.monotonic() < deadline, f"{open_fds()} fds open, expected {expected}"
        await asyncio.sleep(0.01)


def _all_text(exc: BaseException) -> str:
    parts = []
    current: BaseException | None = exc
    while current is not None:
        parts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    parts.append("".join(traceback.format_exception(exc)))
    return "\n".join(parts)


def test_wrong_password_is_auth_and_never_shown(redis_stack: Stack) -> None:
    secret = "s3cret-Right-pw"
    a = start_redis(redis_stack, "redis-a", password=secret)
    cluster = make_cluster([a])
    for wrong in ("Wrong-pw-12345", None):
        failure = failure_of(target_info(cluster, "redis-a", password=wrong))
        assert failure.reason == "auth"
        text = _all_text(failure)
        assert secret not in text
        assert wrong is None or wrong not in text
    obs = probe_once(target_info(cluster, "redis-a", password=secret))
    assert obs.role == "primary"


def test_acl_user_from_url(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a", password="acl-pw-777", username="tierwatch")
    cluster = make_cluster([a])
    assert cluster.targets[0].url.startswith("redis://tierwatch@")
    assert probe_once(target_info(cluster, "redis-a", password="acl-pw-777")).role == "primary"
    failure = failure_of(target_info(cluster, "redis-a", password="not-it-888"))
    assert failure.reason == "auth"
    assert "not-it-888" not in _all_text(failure)


def test_queues_are_read_on_primary_only(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a")
    b = start_redis(redis_stack, "redis-b", replica_of=a)
    cluster = make_cluster([a, b], queues=[{"name": "jobs", "kind": "list"}])
    a.client().rpush("jobs", 1, 2, 3)
    primary: Observation = probe_once(target_info(cluster, "redis-a"))
    assert value(primary, "tierwatch_queue_length", "jobs", "waiting") == 3
    replica = probe_once(target_info(cluster, "redis-b"))
    assert not [s for s in replica.samples if "queue" in s.spec.name]
