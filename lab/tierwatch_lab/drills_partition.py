"""The primary-partition drill (issue 13): the primary cut off together with some of its clients.

The demo is built with ``isolable_primaries`` (demo_build.DemoOptions): the Redis master and the PostgreSQL
primary each run in a network namespace of their own (stack/servernet.py), reached by everyone at
their usual 127.0.0.1 address through the namespace's veth. The drill cuts the veth (silent drops
both ways), so the vantage quorum, the replicas and the recovery service all lose the primary,
while clients inside the namespace still reach it and keep writing: the minority side of a split
brain. Redis first, healed and rejoined, then PostgreSQL.

Writers, each recording its acknowledged writes (Redis ``SET`` + ``WAIT 1``; PostgreSQL a commit
confirmed by a synchronous standby):
- ``lb`` (root namespace) through the write LB, ``direct`` (root) at the old primary's address;
- ``isolated-lb`` and ``isolated-direct``: the same from inside the namespace (the isolated
  clients: the second one reaches the old primary all along).
Expected: the kit promotes a replica; the isolated old primary acknowledges nothing after the cut
(Redis: WAIT finds no replica, then write fencing, min-replicas-to-write, refuses the writes with
NOREPLICAS; PostgreSQL: commits wait for a synchronous standby); after the heal RedisSplitBrain /
PostgresSplitBrain fire and redis_rejoin / pg_rejoin demote it. The checker (independent of the
kit) reads the final primary: acknowledged writes lost (must be 0), unacknowledged writes lost
(counted apart: the isolated side's writes are dropped by design), and the double-primary time
measured by one prober per server, the old primary's running inside the namespace (must be 0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .demo_stack import DemoStack
from .drill_checker import (
    Attempt,
    FaultCheck,
    PgAckWrites,
    RedisAckWrites,
    accepting_over_time,
    apply_checks,
    double_primary_seconds,
    drill_tables,
    in_recovery,
    pg_probers,
    present,
    redis_probers,
)
from .drill_kit import (
    DrillResult,
    PrimarySampler,
    Writer,
    chain_timeline,
    pg_primaries,
    redis_masters,
    redis_role,
    wait_until,
)
from .stack import StackError
from .stack.servernet import ServerNet

HOLD_AFTER_FENCE = 2.0  # seconds the cut is held once the isolated primary refuses writes
REDIS_ALERTS = {"RedisMasterDown", "RedisNoMaster", "RedisSplitBrain"}
PG_ALERTS = {"PostgresPrimaryDown", "PostgresNoPrimary", "PostgresSplitBrain"}
PG_TABLES = {
    "lb": "drill_lb",
    "direct": "drill_direct",
    "isolated-lb": "drill_isolated_lb",
    "isolated-direct": "drill_isolated_direct",
}


class InNamespace:
    """An attempt run from inside ``net``'s namespace: the calling thread enters it on first use."""

    def __init__(self, net: ServerNet, attempt: Callable[[int], bool]):
        self.net, self.attempt = net, attempt
        self._local = threading.local()

    def __call__(self, n: int) -> bool:
        if not getattr(self._local, "entered", False):
            self.net.enter()
            self._local.entered = True
        return self.attempt(n)


class FencedRedisWrites(RedisAckWrites):
    """RedisAckWrites that also remembers when the server refused a write for want of replicas."""

    def __init__(self, port: int, password: str, prefix: str):
        super().__init__(port, password, prefix)
        self.refused_at: list[float] = []

    def _refused(self, exc: redis.RedisError) -> None:
        if isinstance(exc, redis.ResponseError) and str(exc).startswith("NOREPLICAS"):
            self.refused_at.append(time.time())


def _net(demo: DemoStack, server: str) -> ServerNet:
    if server not in demo.server_nets:
        raise StackError(
            f"primary-partition needs {server} in a namespace: build the demo with isolable_primaries"
        )
    return demo.server_nets[server]


def _inside_for(net: ServerNet, old: str) -> Callable[[str, Attempt], Attempt]:
    """The probers' wrap: the old primary's prober runs inside the namespace (the isolated side)."""
    return lambda name, attempt: InNamespace(net, attempt) if name == old else attempt


def _start_and_cut(
    net: ServerNet, old: str, writers: dict[str, Writer], threads: list[Any], result: DrillResult
) -> tuple[float, float]:
    """Start ``threads``; once writes flow through the write LB and inside the namespace, cut ``net``.
    Returns when the cut began and when it was in place."""
    for thread in threads:
        thread.start()
    flowing = wait_until(
        lambda: len(writers["lb"].acked) > 20 and len(writers["isolated-direct"].acked) > 20, time.time() + 30
    )
    if not flowing:
        raise StackError("writes through the write LB and inside the namespace did not flow before the cut")
    failed_at = time.time()
    net.cut()
    result.add(
        failed_at,
        f"failure: {old} cut off with its isolated clients (namespace {net.namespace}, silent drops)",
    )
    return failed_at, time.time()


def _last_isolated_then_fenced(
    old: str,
    writers: dict[str, Writer],
    result: DrillResult,
    fenced_at: Callable[[], float | None],
    fenced: str,
) -> None:
    """Record the old primary's last acknowledged isolated write, then (``fenced_at()``: may wait for
    it) when it was fenced."""
    last_isolated = max((at for _, at in writers["isolated-direct"].acked), default=None)
    result.add(last_isolated, f"last write acknowledged by {old} (inside the namespace)")
    result.add(fenced_at(), fenced)


def _hold_and_heal(net: ServerNet, old: str, result: DrillResult) -> float:
    """Hold the cut HOLD_AFTER_FENCE more seconds, heal it; returns when it was healed."""
    time.sleep(HOLD_AFTER_FENCE)
    net.heal()
    healed = time.time()
    result.add(healed, f"healed: {old} and its isolated clients reachable again")
    return healed


def _rejoin(
    result: DrillResult,
    new: str | None,
    rejoined: Callable[[], bool],
    settled: Callable[[], bool],
    text: str,
    threads: list[Any],
    deadline: float,
) -> float | None:
    """Wait for the old primary to rejoin ``new`` (``settled``: ``new`` is the only primary), then
    stop ``threads``. Returns when it rejoined, None if it did not."""
    result.recovered = new is not None and wait_until(rejoined, deadline) and settled()
    rejoined_at = time.time()
    if result.recovered:
        result.add(rejoined_at, text)
    time.sleep(1)
    for thread in threads:
        thread.stop()
    return rejoined_at if result.recovered else None


def _redis_partition(demo: DemoStack, result: DrillResult, deadline: float) -> FaultCheck:
    old = redis_masters(demo)[0]
    net = _net(demo, old)
    if demo.redis[old].port not in net.exposed:
        raise StackError(f"the Redis master {old} is not the server in namespace {net.namespace}")
    password, lb_port, old_port = demo.redis_password, demo.redis_write.port, demo.redis[old].port
    fenced = FencedRedisWrites(old_port, password, "drill:isolated-direct")
    attempts: dict[str, RedisAckWrites] = {
        "lb": RedisAckWrites(lb_port, password, "drill:lb"),
        "direct": RedisAckWrites(old_port, password, "drill:direct"),
        "isolated-lb": RedisAckWrites(lb_port, password, "drill:isolated-lb"),
        "isolated-direct": fenced,
    }
    writers = {
        name: Writer(InNamespace(net, a) if name.startswith("isolated") else a)
        for name, a in attempts.items()
    }
    probers = redis_probers(demo, _inside_for(net, old))
    threads = [*writers.values(), *probers]
    sampler = PrimarySampler(demo, ("redis",))
    result.failed_at, cut = _start_and_cut(net, old, writers, threads, result)

    def promoted() -> str | None:  # the cut-off old master is not asked (it would time out)
        masters = [n for n, server in demo.redis.items() if n != old and redis_role(server) == "master"]
        return masters[0] if masters and writers["lb"].first_ack_after(cut) else None

    wait_until(lambda: promoted() is not None, deadline)
    new = promoted()
    result.add(writers["lb"].first_ack_after(cut), "writes acknowledged again through the write LB")

    def refused_at() -> float | None:
        if not wait_until(lambda: any(at > cut for at in fenced.refused_at), deadline):
            return None
        return next(at for at in fenced.refused_at if at > cut)

    _last_isolated_then_fenced(old, writers, result, refused_at, f"fenced: {old} refuses writes (NOREPLICAS)")
    healed = _hold_and_heal(net, old, result)

    def rejoined() -> bool:
        assert new is not None
        info = demo.redis[old].client(socket_timeout=1).info("replication")
        return (
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == demo.redis[new].port
            and info.get("master_link_status") == "up"
        )

    rejoined_at = _rejoin(
        result,
        new,
        rejoined,
        lambda: redis_masters(demo) == [new],
        f"rejoined: {old} is a replica of {new}",
        threads,
        deadline,
    )
    result.keep_series({"redis": list(writers.values())}, sampler, {"redis": accepting_over_time(probers)})
    check = FaultCheck(double_primary_s=double_primary_seconds(probers, result.failed_at, time.time()))
    masters = redis_masters(demo)
    result.primaries["redis"] = len(masters)
    if len(masters) == 1:
        client = demo.redis[masters[0]].client()
        acked = [f"{attempts[w].prefix}:{n}" for w, writer in writers.items() for n, _ in writer.acked]
        check.acked = len(acked)
        check.acked_lost = len(acked) - present(client, acked)
        unacked = [key for a in attempts.values() for key in a.unacked]
        check.unacked_lost = len(unacked) - present(client, unacked)
    check.extra = _figures(writers, fenced.unacked_at, cut, healed, rejoined_at)
    check.extra.update(old_primary=old, new_primary=new, namespace=net.namespace)
    chain_timeline(demo, result, {old}, REDIS_ALERTS)
    return check


def _pg_partition(demo: DemoStack, result: DrillResult, deadline: float) -> FaultCheck:
    old = pg_primaries(demo)[0]
    net = _net(demo, old)
    if demo.pg[old].port not in net.exposed:
        raise StackError(f"the PostgreSQL primary {old} is not the server in namespace {net.namespace}")
    drill_tables(demo.pg[old], (*PG_TABLES.values(), "drill_probe"))
    password, lb_port, old_port = demo.pg_app_password, demo.pg_write.port, demo.pg[old].port
    fenced = PgAckWrites(old_port, password, PG_TABLES["isolated-direct"])
    attempts: dict[str, PgAckWrites] = {
        "lb": PgAckWrites(lb_port, password, PG_TABLES["lb"]),
        "direct": PgAckWrites(old_port, password, PG_TABLES["direct"]),
        "isolated-lb": PgAckWrites(lb_port, password, PG_TABLES["isolated-lb"]),
        "isolated-direct": fenced,
    }
    inside = {name: InNamespace(net, a) for name, a in attempts.items() if name.startswith("isolated")}
    writers = {name: Writer(inside.get(name, a)) for name, a in attempts.items()}
    probers = pg_probers(demo, _inside_for(net, old))
    threads = [*writers.values(), *probers]
    sampler = PrimarySampler(demo, ("postgres",))
    pg_failed_at, cut = _start_and_cut(net, old, writers, threads, result)

    def promoted() -> str | None:
        primaries = [n for n, server in demo.pg.items() if n != old and in_recovery(server) is False]
        return primaries[0] if primaries and writers["lb"].first_ack_after(cut) else None

    wait_until(lambda: promoted() is not None, deadline)
    new = promoted()
    result.add(writers["lb"].first_ack_after(cut), "writes committed again through the write LB")
    # the PostgreSQL fencing: a write taken but not acknowledged (its commit waits for a standby)
    _last_isolated_then_fenced(
        old,
        writers,
        result,
        lambda: next((at for at in fenced.unacked_at if at > cut), None),
        f"fenced: {old} leaves commits waiting for a synchronous standby",
    )
    healed = _hold_and_heal(net, old, result)

    def rejoined() -> bool:
        assert new is not None
        server = demo.pg[old]
        port = server.scalar("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        return server.in_recovery() and port == demo.pg[new].port

    rejoined_at = _rejoin(
        result,
        new,
        rejoined,
        lambda: pg_primaries(demo) == [new],
        f"rejoined: {old} streams from {new}",
        threads,
        deadline,
    )
    result.keep_series(
        {"postgres": list(writers.values())}, sampler, {"postgres": accepting_over_time(probers)}
    )
    check = FaultCheck(double_primary_s=double_primary_seconds(probers, pg_failed_at, time.time()))
    primaries = pg_primaries(demo)
    result.primaries["postgres"] = len(primaries)
    if len(primaries) == 1:
        server = demo.pg[primaries[0]]
        for name, writer in writers.items():
            ids = {row[0] for row in server.sql(f"SELECT id FROM {PG_TABLES[name]}")}
            acked = {n for n, _ in writer.acked}
            check.acked += len(acked)
            check.acked_lost += len(acked - ids)
            check.unacked_lost += len(set(attempts[name].unacked) - ids)
    check.extra = _figures(writers, fenced.unacked_at, cut, healed, rejoined_at)
    check.extra.update(old_primary=old, new_primary=new, namespace=net.namespace)
    failed_at, result.failed_at = result.failed_at, pg_failed_at  # the timeline of this engine's cut
    chain_timeline(demo, result, {old}, PG_ALERTS)
    result.failed_at = failed_at
    return check


def _figures(
    writers: dict[str, Writer], taken: list[float], cut: float, healed: float, rejoined: float | None
) -> dict[str, Any]:
    """Seconds from the cut to each milestone, and the acknowledged writes of each writer after it
    (``taken``: when the old primary took an isolated write without acknowledging it)."""
    back = writers["lb"].first_ack_after(cut)
    last_taken = max(taken, default=0.0)
    return {
        "writes_back_s": None if back is None else round(back - cut, 2),
        "old_took_unacked_writes_until_s": round(last_taken - cut, 2) if last_taken > cut else None,
        "cut_s": round(healed - cut, 2),
        "rejoin_after_heal_s": None if rejoined is None else round(rejoined - healed, 2),
        # attempts started after the cut: the direct ones (the old primary) must have none
        "acked_after_cut": {name: len([1 for _, at in w.acked if at > cut]) for name, w in writers.items()},
    }


def drill_primary_partition(demo: DemoStack, deadline: float) -> DrillResult:
    """Cut the Redis master off with its isolated clients, heal, then the same with the PostgreSQL
    primary (each in a namespace of its own). The kit must promote, the old primary must stop
    acknowledging writes and rejoin once healed."""
    result = DrillResult("primary-partition", time.time())
    try:
        checks = {"redis": _redis_partition(demo, result, deadline)}
        redis_recovered = result.recovered
        checks["postgres"] = _pg_partition(demo, result, deadline + 120)
    finally:  # a drill that failed half-way leaves no cut behind
        for net in demo.server_nets.values():
            if net.is_cut:
                net.heal()
    result.recovered = result.recovered and redis_recovered
    result = apply_checks(result, checks)
    for check in checks.values():
        isolated = check.extra["acked_after_cut"]
        if isolated["isolated-direct"] or isolated["direct"]:  # the old primary acknowledged after the cut
            result.recovered = False
    return result


PARTITION_DRILLS = {"primary-partition": drill_primary_partition}
