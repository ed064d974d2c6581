"""Drills of the kit's own redundancy (docs/ha.md): a watcher component dies around a primary's
failure, and the chain must still end in exactly one failover with no acknowledged write lost.

- ``kill-alertmanager-peer``: kill -9 one peer of the demo's Alertmanager cluster, then the Redis
  master: Prometheus still reaches the other peer, which notifies the recovery service.
- ``kill-recovery-leader`` (``-pg``): the demo runs two recovery replicas with a lease in etcd; kill
  the Redis master (the PostgreSQL primary), then kill -9 the recovery leader at a random moment of
  the failover (0 to 8 s later): the other replica takes the lease and finishes (or verifies) it.
"""

from __future__ import annotations

import random
import threading
import time

import httpx

from .demo import DemoStack
from .drills import DrillResult, _pg_primaries, _redis_masters, drill_pg_primary, drill_redis_master
from .stack import wait_for
from .stack.chain import audit
from .stack.tierwatch import TierwatchProcess


def drill_kill_alertmanager_peer(demo: DemoStack, deadline: float) -> DrillResult:
    """Kill the first Alertmanager peer, then run the Redis master drill on what is left."""
    assert demo.chain is not None
    peers = demo.chain.alertmanagers
    if len(peers) < 2:
        raise RuntimeError("the demo runs a single Alertmanager: nothing would take over")
    peers[0].process.kill()
    killed = time.time()
    result = drill_redis_master(demo, deadline)
    result.scenario = "kill-alertmanager-peer"
    result.add(killed, f"watcher: killed Alertmanager peer 1 of {len(peers)}")
    return result


def _leader(recoveries: list[TierwatchProcess]) -> TierwatchProcess | None:
    for replica in recoveries:
        try:
            if "leader (token" in httpx.get(replica.url + "/-/ready", timeout=2).text:
                return replica
        except httpx.HTTPError:
            continue
    return None


def drill_kill_recovery_leader(
    demo: DemoStack, deadline: float, delay: float | None = None, engine: str = "redis"
) -> DrillResult:
    """The Redis master (``engine`` postgres: PostgreSQL primary) drill, with the recovery leader killed
    ``delay`` (default: random 0-8) seconds after the primary."""
    assert demo.chain is not None
    recoveries = demo.chain.recoveries
    if len(recoveries) < 2:
        raise RuntimeError("the demo runs a single recovery service: build it with recovery_replicas=2")
    leader = wait_for(lambda: _leader(recoveries), 30, "a recovery leader")
    delay = random.uniform(0, 8) if delay is None else delay
    primary = (
        demo.redis[_redis_masters(demo)[0]].process
        if engine == "redis"
        else demo.pg[_pg_primaries(demo)[0]].process
    )
    killed: dict[str, float] = {}

    def killer() -> None:
        limit = time.time() + 60
        while primary.running() and time.time() < limit:
            time.sleep(0.02)
        time.sleep(delay)
        killed["at"] = time.time()
        leader.process.kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = (drill_redis_master if engine == "redis" else drill_pg_primary)(demo, deadline)
    thread.join(70)
    result.scenario = "kill-recovery-leader" if engine == "redis" else "kill-recovery-leader-pg"
    at = killed.get("at")
    result.add(
        at, f"watcher: killed the recovery leader {leader.name} (kill -9), {delay:.1f}s after the primary"
    )
    for entry in audit(demo.chain):
        if at is not None and entry["ts"] >= at and entry["event"] in ("lease_acquired", "takeover"):
            what = (
                "took the lease"
                if entry["event"] == "lease_acquired"
                else f"took over, resumed {entry.get('resumed')}"
            )
            result.add(entry["ts"], f"watcher: the other replica {what}")
    return result


HA_DRILLS = {
    "kill-alertmanager-peer": drill_kill_alertmanager_peer,
    "kill-recovery-leader": drill_kill_recovery_leader,
    "kill-recovery-leader-pg": lambda demo, deadline: drill_kill_recovery_leader(
        demo, deadline, engine="postgres"
    ),
}
