"""The failover template's shared pieces: the one address→target mapping (also used by the probes),
the PostgreSQL follow check (host AND port), and candidates without a TCP address."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tierwatch.clients.addresses import normal_host, target_at, url_address
from tierwatch.clients.postgres import conninfo_address
from tierwatch.config import LoadedConfig, TargetConfig
from tierwatch.probes.base import TargetInfo
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.failover import choose
from tierwatch.recovery.actions.pg_promote import PgDriver, follow_check
from tierwatch.recovery.actions.redis_failover import RedisDriver, RedisSeen
from tierwatch_lab.stack import Stack

from action_fixtures import make_context, start_pg_cluster


def redis_cluster(urls: dict[str, str]) -> dict[str, object]:
    targets = [{"name": name, "region": "main", "url": url} for name, url in urls.items()]
    return {"name": "cache-main", "tier": "redis", "targets": targets}


def test_addresses_fold_the_names_of_loopback_and_default_the_port() -> None:
    assert normal_host("localhost") == normal_host("LOCALHOST") == "127.0.0.1"
    assert normal_host("::ffff:127.0.0.1") == "127.0.0.1"
    assert normal_host("127.0.0.2") == "127.0.0.2"
    assert url_address("redis://localhost") == ("127.0.0.1", 6379)
    assert url_address("postgresql://tw@db.example:5433/postgres") == ("db.example", 5433)
    assert url_address("postgresql://tw@/postgres?host=127.0.0.2&port=6000") == ("127.0.0.2", 6000)
    for no_tcp in (
        "unix:///run/redis.sock",
        "postgresql://tw@/postgres?host=/run/postgresql",
        "postgresql://a:1,b:2/x",
    ):
        assert url_address(no_tcp) is None, no_tcp
    assert conninfo_address("host=localhost port=5433 user=replicator") == ("127.0.0.1", 5433)
    assert conninfo_address("host=127.0.0.2 user=replicator") == ("127.0.0.2", 5432)
    assert conninfo_address("host=/var/run/postgresql port=5433") is None


def test_one_mapping_from_an_address_to_a_target_for_probes_and_actions(
    make_config: Callable[..., LoadedConfig],
) -> None:
    urls = {
        "redis-a": "redis://127.0.0.1:7001",
        "redis-b": "redis://localhost:7002",
        "redis-c": "unix:///x.sock",
    }
    cluster = make_config([redis_cluster(urls)]).config.clusters[0]
    assert target_at(cluster.targets, "localhost", 7001).name == "redis-a"  # type: ignore[union-attr]
    assert target_at(cluster.targets, "127.0.0.1", 7002).name == "redis-b"  # type: ignore[union-attr]
    assert target_at(cluster.targets, "127.0.0.2", 7001) is None
    info = TargetInfo("redis", cluster, cluster.targets[0], None, 1.0)
    assert (
        info.peer_by_address("127.0.0.1", 7002) == "redis-b"
    )  # a replica reported by IP, configured as localhost
    assert info.peer_by_address("127.0.0.2", 7002) is None


def test_pg_follow_check_compares_host_and_port(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """A replica streaming from 127.0.0.1:P does not follow a new primary at 127.0.0.2:P (before the
    fix only the port was compared: with every server on 5432 any streaming replica "followed")."""
    pg = start_pg_cluster(stack, ("pg-2",))
    loaded = make_config([pg.cluster_entry("main-db")])
    ctx, _ = make_context(loaded, "main-db", {"target": "pg-1"})
    port = pg.servers["pg-1"].port
    seen = asyncio.run(PgDriver(ctx).observe(ctx.target("pg-2")))  # type: ignore[arg-type]
    assert seen.sender == ("127.0.0.1", port) and seen.upstream == ("127.0.0.1", port)

    def new(host: str) -> TargetConfig:
        return TargetConfig(
            name="pg-new", region="main", url=f"postgresql://tierwatch@{host}:{port}/postgres"
        )

    assert follow_check(seen, new("localhost"), ("127.0.0.1", port)) == (None, False)
    problem, paused = follow_check(seen, new("127.0.0.2"), ("127.0.0.2", port))
    assert problem == f"pg-2 does not stream from pg-new (its WAL receiver is connected to 127.0.0.1:{port})"
    assert not paused


def replica(target: TargetConfig, offset: int) -> RedisSeen:
    info = {"role": "slave", "master_host": "127.0.0.1", "master_port": 7001, "slave_repl_offset": offset}
    return RedisSeen(target, answered=True, info=info)


def test_a_replica_without_a_tcp_address_is_never_promoted(make_config: Callable[..., LoadedConfig]) -> None:
    """The other replicas are re-pointed at the new primary's address: a candidate whose URL has none
    is skipped, never re-pointed to a made-up 127.0.0.1 (what pg_promote fell back to)."""
    urls = {
        "redis-1": "redis://127.0.0.1:7001",
        "redis-2": "unix:///tmp/redis-2.sock",
        "redis-3": "redis://127.0.0.1:7003",
    }
    loaded = make_config([redis_cluster(urls)])
    ctx, recorder = make_context(loaded, "cache-main", {"target": "redis-1"})
    old, socket_only, tcp = ctx.cluster.targets
    driver = RedisDriver(ctx)

    best = choose(ctx, driver, [replica(socket_only, 500), replica(tcp, 100)], old)
    assert isinstance(best, RedisSeen) and best.name == "redis-3"
    skipped = next(e for e in recorder.named("candidate") if e["target"] == "redis-2")
    assert skipped["eligible"].startswith("no TCP address")

    refusal = choose(ctx, driver, [replica(socket_only, 500)], old)
    assert isinstance(refusal, Outcome) and refusal.status == "refused"
    assert "redis-2: no TCP address" in refusal.detail and "limit" not in refusal.facts
