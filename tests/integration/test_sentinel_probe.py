"""SentinelProbe against real redis-sentinel processes, including a real failover."""

from __future__ import annotations

import pytest

from tierwatch.config import ClusterConfig
from tierwatch.probes.base import Observation
from tierwatch.probes.sentinel import SentinelProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.redis import RedisServer, start_redis, start_sentinels

from redis_fixtures import make_cluster, poll, probe_once, redis_stack, samples_named, target_info, value

__all__ = ["redis_stack"]  # the fixture, imported for pytest


def _sentinel_obs(cluster: ClusterConfig, name: str, password: str | None = None) -> Observation:
    return probe_once(target_info(cluster, name, password=password), SentinelProbe)


def _master_of(obs: Observation) -> list[str]:
    return [
        labels[0] for labels, v in samples_named(obs, "tierwatch_sentinel_master_target").items() if v == 1
    ]


def _setup(stack: Stack, **kwargs: object) -> tuple[list[RedisServer], list[RedisServer], ClusterConfig]:
    a = start_redis(stack, "redis-a")
    b = start_redis(stack, "redis-b", replica_of=a)
    c = start_redis(stack, "redis-c", replica_of=a)
    sentinels = start_sentinels(
        stack, a, n=3, quorum=2, down_after_ms=500, failover_timeout_ms=5000, **kwargs
    )  # type: ignore[arg-type]
    return [a, b, c], sentinels, make_cluster([a, b, c], sentinels=sentinels)


def test_sentinel_reports_master_replicas_and_quorum(redis_stack: Stack) -> None:
    _servers, _sentinels, cluster = _setup(redis_stack)
    obs = poll(
        lambda: (
            (o := _sentinel_obs(cluster, "sentinel-1"))
            and value(o, "tierwatch_sentinel_ok_replicas") == 2
            and o
        ),
        15,
        "sentinel-1 to discover both replicas",
    )
    assert obs.role is None
    assert value(obs, "tierwatch_sentinel_master_monitored") == 1
    assert _master_of(obs) == ["redis-a"]
    assert set(samples_named(obs, "tierwatch_sentinel_master_target")) == {
        ("redis-a",),
        ("redis-b",),
        ("redis-c",),
    }
    assert value(obs, "tierwatch_sentinel_master_address_unknown") == 0
    assert value(obs, "tierwatch_sentinel_master_ok") == 1
    assert value(obs, "tierwatch_sentinel_ok_sentinels") == 3
    assert value(obs, "tierwatch_sentinel_quorum") == 2
    assert value(obs, "tierwatch_sentinel_quorum_reachable") == 1
    assert value(obs, "tierwatch_sentinel_failover_in_progress") == 0
    assert value(obs, "tierwatch_sentinel_config_epoch") == 0


@pytest.mark.slow
def test_failover_moves_master_and_flips_roles(redis_stack: Stack) -> None:
    (a, _b, _c), _sentinels, cluster = _setup(redis_stack)
    poll(
        lambda: value(_sentinel_obs(cluster, "sentinel-1"), "tierwatch_sentinel_ok_replicas") == 2,
        15,
        "sentinel-1 to discover both replicas",
    )
    a.process.pause()
    try:
        obs = poll(
            lambda: (
                (o := _sentinel_obs(cluster, "sentinel-2")) and _master_of(o) not in ([], ["redis-a"]) and o
            ),
            30,
            "the sentinels to fail over to a replica",
        )
    finally:
        a.process.resume()
    (new_master,) = _master_of(obs)
    assert new_master in ("redis-b", "redis-c")
    assert value(obs, "tierwatch_sentinel_config_epoch") >= 1  # type: ignore[operator]
    poll(
        lambda: probe_once(target_info(cluster, new_master)).role == "primary",
        15,
        f"{new_master} to report the primary role",
    )
    poll(
        lambda: probe_once(target_info(cluster, "redis-a")).role == "replica",
        30,
        "the old master to be reconfigured as a replica",
    )
    for sentinel in ("sentinel-1", "sentinel-3"):
        poll(
            lambda s=sentinel: _master_of(_sentinel_obs(cluster, s)) == [new_master],
            15,
            f"{sentinel} to agree",
        )


def test_quorum_unreachable_when_sentinels_die(redis_stack: Stack) -> None:
    _servers, sentinels, cluster = _setup(redis_stack)
    sentinels[1].process.kill()
    sentinels[2].process.kill()
    obs = poll(
        lambda: (
            (o := _sentinel_obs(cluster, "sentinel-1"))
            and value(o, "tierwatch_sentinel_ok_sentinels") == 1
            and o
        ),
        15,
        "sentinel-1 to see the other sentinels down",
    )
    assert value(obs, "tierwatch_sentinel_quorum_reachable") == 0  # CKQUORUM agrees with the flags
    assert value(obs, "tierwatch_sentinel_master_ok") == 1


def test_unmonitored_master_name_and_unknown_master_address(redis_stack: Stack) -> None:
    (a, b, _c), sentinels, _cluster = _setup(redis_stack)
    other = make_cluster([a], sentinels=sentinels, master_name="not-monitored")
    obs = _sentinel_obs(other, "sentinel-1")
    assert value(obs, "tierwatch_sentinel_master_monitored") == 0
    assert len(obs.samples) == 1
    only_replicas = make_cluster([b], sentinels=sentinels)
    obs = _sentinel_obs(only_replicas, "sentinel-1")
    assert value(obs, "tierwatch_sentinel_master_address_unknown") == 1
    assert samples_named(obs, "tierwatch_sentinel_master_target") == {("redis-b",): 0}


def test_unprotected_sentinel_of_a_protected_cluster(redis_stack: Stack) -> None:
    a = start_redis(redis_stack, "redis-a", password="cluster-pw-1")
    sentinels = start_sentinels(redis_stack, a, n=1, quorum=1)
    cluster = make_cluster([a], sentinels=sentinels)
    obs = _sentinel_obs(cluster, "sentinel-1", password="cluster-pw-1")
    assert value(obs, "tierwatch_sentinel_master_ok") == 1
    assert _master_of(obs) == ["redis-a"]
