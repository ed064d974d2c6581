"""The whole chain, for real: the exporter watches Redis, Prometheus evaluates the kit's rules,
Alertmanager routes with the kit's config, the recovery service acts. Killing the Redis master ends
with the best replica promoted, the other following it, the write address pointing at it, and writes
succeeding — with no one touching anything.

The rules are the real rules/ files; only the ``for`` of RedisMasterDown/RedisNoMaster is set to
2 s (production: 1 m), so the test does not wait a minute.
"""

from __future__ import annotations

import time

import pytest
import redis

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.chain import ChainTiming, audit, redis_cluster, start_chain, write_lb_cluster
from tierwatch_lab.stack.haproxy import start_write_lb
from tierwatch_lab.stack.redis import start_redis

PASSWORD = "chain-redis-pw-123"
BACKEND = "be_redis_write"


@pytest.mark.slow
def test_killed_redis_master_recovers_by_itself(stack: Stack) -> None:
    master = start_redis(stack, "redis-a", password=PASSWORD)
    replicas = [
        start_redis(stack, name, password=PASSWORD, replica_of=master) for name in ("redis-b", "redis-c")
    ]
    servers = [master, *replicas]
    lb = start_write_lb(stack, "lb-redis", BACKEND, [(s.name, s.port) for s in servers], primary="redis-a")
    password_file = stack.path("chain-secrets", "redis")
    password_file.write_text(PASSWORD)
    clusters = [redis_cluster("cache-main", servers, password_file)]
    # the write LB: the recovery service finds its runtime socket through an LB cluster entry
    write_lb = [write_lb_cluster("redis-write", [lb])]
    recovery = {
        "allow": {"RedisMasterDown": "redis_failover", "RedisNoMaster": "redis_failover"},
        "clusters": {"cache-main": {"write_backend": BACKEND}},
    }
    timing = ChainTiming(for_values=(("RedisMasterDown", "2s"), ("RedisNoMaster", "2s")))
    chain = start_chain(stack, clusters, recovery, timing, recovery_only=write_lb)

    writes = redis.Redis(host="127.0.0.1", port=lb.port, password=PASSWORD, socket_timeout=2)
    writes.set("before", "1")
    wait_for(lambda: chain.prometheus.targets_up(), 30, "Prometheus scraping both jobs")
    wait_for(
        lambda: chain.prometheus.value('tierwatch_role{target="redis-a",role="primary"}') == 1,
        30,
        "master seen by Prometheus",
    )

    killed_at = time.time()
    master.process.kill()

    def recovered() -> str | None:
        for replica in replicas:
            try:
                role = replica.client(socket_timeout=1).info("replication")["role"]
            except redis.RedisError:
                continue
            if role == "master":
                return replica.name
        return None

    new_master = wait_for(recovered, 60, "a replica promoted by the chain")
    outcome = wait_for(lambda: [e for e in audit(chain) if e["event"] == "outcome"], 30, "action outcome")[0]
    assert outcome["outcome"] == "succeeded", outcome
    follower = next(r for r in replicas if r.name != new_master)
    info = follower.client().info("replication")
    new_port = next(s.port for s in servers if s.name == new_master)
    assert info["role"] == "slave" and int(info["master_port"]) == new_port
    wait_for(
        lambda: follower.client().info("replication")["master_link_status"] == "up", 20, "follower linked"
    )

    def write_through_lb() -> bool:
        try:
            fresh = redis.Redis(host="127.0.0.1", port=lb.port, password=PASSWORD, socket_timeout=2)
            fresh.set("after", "1")
            fresh.close()
            return True
        except redis.RedisError:
            return False

    wait_for(write_through_lb, 20, "a write through the write address")
    new_server = next(s for s in servers if s.name == new_master)
    assert new_server.client().get("after") == "1" and new_server.client().get("before") == "1"
    masters = [r.name for r in replicas if r.client().info("replication")["role"] == "master"]
    assert masters == [new_master]
    entries = audit(chain)
    accepted = next(e for e in entries if e["event"] == "alert_accepted")
    print(
        f"\nkill -> alert at recovery service {accepted['ts'] - killed_at:.2f}s, "
        f"-> outcome {outcome['ts'] - killed_at:.2f}s (RedisMasterDown for=2s, 1s cadence)"
    )
    assert sum(1 for e in entries if e["event"] == "action_started") == 1
