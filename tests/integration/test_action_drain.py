"""The old primary leaves the write backend before a replica is promoted (real Redis, real HAProxy).

A 2026-12-07 bench run (bench/patroni_bench.py, the chain's PostgreSQL pause) lost 3 acknowledged
writes: the paused old primary woke up after the promotion but before the write backend moved,
the writer's session through the LB was still open to it, and a replica not yet re-pointed still
confirmed its commits. Here the old master is paused with a client session open to it through the
LB, and wakes up exactly when the promotion starts: the session must already be shut, and no new
one may reach it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.redis_failover import RedisDriver, RedisFailover, RedisSeen
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import start_write_lb
from tierwatch_lab.stack.redis import RedisServer, start_redis

from action_fixtures import lb_cluster, make_context

PASSWORD = "redis-drain-secret-2b9c"
BACKEND = "be_redis_write"
SILENCE = 3  # witness_max_silence's default: until then the replicas still vouch for the master


def _write(client: redis.Redis, key: str) -> str:
    """SET through the LB: "acknowledged", or why not."""
    try:
        return "acknowledged" if client.set(key, "1") else "refused"
    except redis.RedisError as exc:
        return type(exc).__name__


def test_a_paused_master_that_wakes_as_the_replica_is_promoted_gets_no_write_through_the_lb(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = start_redis(stack, "redis-1", password=PASSWORD)
    replicas = [start_redis(stack, n, replica_of=master, password=PASSWORD) for n in ("redis-2", "redis-3")]
    servers: list[RedisServer] = [master, *replicas]
    lb = start_write_lb(stack, "lb-1", BACKEND, [(s.name, s.port) for s in servers], primary="redis-1")
    secret = tmp_path / "redis.pass"
    secret.write_text(PASSWORD + "\n")
    targets = [{"name": s.name, "region": "main", "url": s.url} for s in servers]
    cluster = {"name": "cache", "tier": "redis", "password_file": str(secret), "targets": targets}
    loaded = make_config([cluster, lb_cluster(lb)])

    held = redis.Redis(port=lb.port, password=PASSWORD, socket_timeout=2, retry_on_timeout=False)
    assert _write(held, "before") == "acknowledged"  # the session through the LB to redis-1
    master.process.pause()
    for replica in replicas:
        wait_for(
            lambda r=replica: int(r.info("replication").get("master_last_io_seconds_ago", -1)) > SILENCE,
            20,
            f"{replica.name} to stop hearing from the paused master",
        )

    during: dict[str, Any] = {}
    promote = RedisDriver.promote

    async def wake_then_promote(self: RedisDriver, best: RedisSeen) -> None:
        master.process.resume()  # the pause ends just as the promotion starts
        wait_for(lambda: master.client().ping(), 5, "redis-1 to answer again")
        during["held"] = await asyncio.to_thread(_write, held, "held-session")
        fresh = redis.Redis(port=lb.port, password=PASSWORD, socket_timeout=2, retry_on_timeout=False)
        during["new"] = await asyncio.to_thread(_write, fresh, "new-session")
        fresh.close()
        await promote(self, best)

    monkeypatch.setattr(RedisDriver, "promote", wake_then_promote)
    settings = ClusterRecovery(write_backend=BACKEND)
    ctx, recorder = make_context(
        loaded, "cache", {"alertname": "RedisMasterDown", "target": "redis-1"}, settings=settings
    )
    outcome = asyncio.run(RedisFailover().run(ctx))
    held.close()

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert during["held"] != "acknowledged" and during["new"] != "acknowledged", during
    assert master.client().exists("held-session", "new-session") == 0
    order = [e["event"] for e in recorder.events]
    assert order.index("write_backend_drained") < order.index("promoted") < order.index("write_backend_set")
    assert recorder.named("write_backend_drained")[0]["results"] == {"lb-1": "ok"}
