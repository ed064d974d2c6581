"""Drills with the faults that make automated failover dangerous (issue 13): a primary paused longer
than the detection window that wakes up still believing it is the primary, and an old primary that
comes back after its replacement was promoted. The kit must fail over, then demote the returning
server (redis_rejoin, pg_rejoin), and never let two primaries acknowledge writes.

Each drill has a checker independent of the kit (drill_checker.py): writers through the write LB and
directly against the old primary, a prober per server for the double-primary time, and the writes
read back from the one primary left.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

from .demo_stack import WINDOW, DemoStack
from .drill_checker import (
    FaultCheck,
    PgAckWrites,
    RedisAckWrites,
    accepting_over_time,
    apply_checks,
    double_primary_checks,
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
from .stack.chain import audit

# --- Redis ---------------------------------------------------------------------------------------


def _redis_run(
    demo: DemoStack,
    result: DrillResult,
    fault: Callable[[str], None],
    heal: Callable[[str], None],
    deadline: float,
) -> FaultCheck:
    old = redis_masters(demo)[0]
    via_lb = RedisAckWrites(demo.redis_write.port, demo.redis_password, "drill:lb")
    direct = RedisAckWrites(demo.redis[old].port, demo.redis_password, "drill:direct")
    writers = [Writer(via_lb), Writer(direct)]
    probers = redis_probers(demo)
    for thread in (*writers, *probers):
        thread.start()
    sampler = PrimarySampler(demo, ("redis",))
    wait_until(lambda: len(writers[0].acked) > 20, time.time() + 20)
    result.failed_at = time.time()
    fault(old)
    done = time.time()  # writes started before the fault took hold (signalling takes a moment) do not count

    def promoted() -> str | None:  # the paused or dead old master is not asked (it would time out)
        masters = [n for n, server in demo.redis.items() if n != old and redis_role(server) == "master"]
        return masters[0] if masters and writers[0].first_ack_after(done) else None

    wait_until(lambda: promoted() is not None, deadline)
    new = promoted()
    result.add(writers[0].first_ack_after(done), "writes acknowledged again through the write LB")
    heal(old)
    result.add(time.time(), f"healed: {old} is back")

    def rejoined() -> bool:
        info = demo.redis[old].client(socket_timeout=1).info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    result.recovered = new is not None and wait_until(rejoined, deadline) and redis_masters(demo) == [new]
    if result.recovered:
        result.add(time.time(), f"rejoined: {old} is a replica of {new}")
    time.sleep(1)
    for thread in (*writers, *probers):
        thread.stop()
    result.keep_series({"redis": writers}, sampler, {"redis": accepting_over_time(probers)})
    check = FaultCheck(double_primary_s=double_primary_seconds(probers, result.failed_at, time.time()))
    masters = redis_masters(demo)
    result.primaries["redis"] = len(masters)
    if len(masters) == 1:
        client = demo.redis[masters[0]].client()
        acked = [f"drill:lb:{n}" for n, _ in writers[0].acked] + [
            f"drill:direct:{n}" for n, _ in writers[1].acked
        ]
        check.acked = len(acked)
        check.acked_lost = len(acked) - present(client, acked)
        unacked = via_lb.unacked + direct.unacked
        check.unacked_lost = len(unacked) - present(client, unacked)
    chain_timeline(demo, result, {old}, {"RedisMasterDown", "RedisNoMaster", "RedisSplitBrain"})
    return check


# --- PostgreSQL ------------------------------------------------------------------------------------


def _pg_run(
    demo: DemoStack,
    result: DrillResult,
    fault: Callable[[str], None],
    heal: Callable[[str], None],
    deadline: float,
) -> FaultCheck:
    old = pg_primaries(demo)[0]
    drill_tables(demo.pg[old], ("drill_lb", "drill_direct", "drill_probe"))
    via_lb = PgAckWrites(demo.pg_write.port, demo.pg_app_password, "drill_lb")
    direct = PgAckWrites(demo.pg[old].port, demo.pg_app_password, "drill_direct")
    writers = [Writer(via_lb), Writer(direct)]
    probers = pg_probers(demo)
    for thread in (*writers, *probers):
        thread.start()
    sampler = PrimarySampler(demo, ("postgres",))
    wait_until(lambda: len(writers[0].acked) > 20, time.time() + 30)
    result.failed_at = time.time()
    fault(old)
    done = time.time()

    def promoted() -> str | None:
        primaries = [n for n, server in demo.pg.items() if n != old and in_recovery(server) is False]
        return primaries[0] if primaries and writers[0].first_ack_after(done) else None

    wait_until(lambda: promoted() is not None, deadline)
    new = promoted()
    result.add(writers[0].first_ack_after(done), "writes committed again through the write LB")
    heal(old)
    result.add(time.time(), f"healed: {old} is back")

    def rejoined() -> bool:
        server = demo.pg[old]
        return server.in_recovery() and bool(
            server.scalar("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        )

    result.recovered = new is not None and wait_until(rejoined, deadline) and pg_primaries(demo) == [new]
    if result.recovered:
        result.add(time.time(), f"rejoined: {old} streams from {new}")
    time.sleep(1)
    for thread in (*writers, *probers):
        thread.stop()
    result.keep_series({"postgres": writers}, sampler, {"postgres": accepting_over_time(probers)})
    check = FaultCheck(double_primary_s=double_primary_seconds(probers, result.failed_at, time.time()))
    primaries = pg_primaries(demo)
    result.primaries["postgres"] = len(primaries)
    if len(primaries) == 1:
        server = demo.pg[primaries[0]]
        for writer, table, ack in ((writers[0], "drill_lb", via_lb), (writers[1], "drill_direct", direct)):
            ids = {row[0] for row in server.sql(f"SELECT id FROM {table}")}
            acked = {n for n, _ in writer.acked}
            check.acked += len(acked)
            check.acked_lost += len(acked - ids)
            check.unacked_lost += len(set(ack.unacked) - ids)
    chain_timeline(demo, result, {old}, {"PostgresPrimaryDown", "PostgresNoPrimary", "PostgresSplitBrain"})
    return check


# --- the drills ------------------------------------------------------------------------------------


def drill_redis_pause(demo: DemoStack, deadline: float) -> DrillResult:
    result = DrillResult("redis-pause", time.time())

    def fault(name: str) -> None:
        demo.redis[name].process.pause()
        result.add(time.time(), f"failure: paused Redis master {name} (SIGSTOP)")

    check = _redis_run(demo, result, fault, lambda name: demo.redis[name].process.resume(), deadline)
    return apply_checks(result, {"redis": check})


def drill_pg_pause(demo: DemoStack, deadline: float) -> DrillResult:
    result = DrillResult("pg-pause", time.time())

    def fault(name: str) -> None:
        demo.pg[name].process.pause()
        result.add(time.time(), f"failure: paused PostgreSQL primary {name} (SIGSTOP of every process)")

    check = _pg_run(demo, result, fault, lambda name: demo.pg[name].process.resume(), deadline)
    return apply_checks(result, {"postgres": check})


def drill_old_primary_return(demo: DemoStack, deadline: float) -> DrillResult:
    """Redis first, then PostgreSQL, on the same demo stack (one failed_at per engine in the timeline)."""
    result = DrillResult("old-primary-return", time.time())

    def kill_redis(name: str) -> None:
        demo.redis[name].process.kill()
        result.add(time.time(), f"failure: killed Redis master {name}")

    def restart_redis(name: str) -> None:
        demo.redis[name].process.start()

    def kill_pg(name: str) -> None:
        demo.pg[name].process.kill()
        result.add(time.time(), f"failure: killed PostgreSQL primary {name}")

    def restart_pg(name: str) -> None:
        demo.pg[name].process.start()
        demo.pg[name].wait_ready()

    redis_check = _redis_run(demo, result, kill_redis, restart_redis, deadline)
    redis_recovered, first = result.recovered, result.failed_at
    pg_check = _pg_run(demo, result, kill_pg, restart_pg, deadline + 60)
    result.recovered = result.recovered and redis_recovered
    result.failed_at = first
    return apply_checks(result, {"redis": redis_check, "postgres": pg_check})


# --- a watcher cut off from the primaries ----------------------------------------------------------

CUT_VANTAGE = "watcher-1"  # the vantage point whose network namespace is cut (demo netns_watchers)
HOLD_BEYOND = 10.0  # seconds the cut is held beyond its detection plus the detection window
# seconds: longer without an acknowledged write through a write LB is a stall. Between scheduler noise
# on the loaded 2-core suite run (1.42 s seen, 2026-12-07; 0.09 s alone) and the shortest outage a
# failover would cause (the 5 s detection window, then the action)
MAX_ACK_GAP = 3.0
FAILOVER_ALERTS = ("RedisMasterDown", "PostgresPrimaryDown", "RedisNoMaster", "PostgresNoPrimary")


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


def _max_gap(times: list[float], start: float, end: float) -> float:
    """Longest time in [start, end] without an acknowledged write (``times``: their start times)."""
    marks = [start, *sorted(t for t in times if start < t < end), end]
    return round(max(b - a for a, b in itertools.pairwise(marks)), 2)


def drill_watcher_partition(demo: DemoStack, deadline: float) -> DrillResult:
    """Cut the watcher of one vantage point (an exporter in a network namespace) off from the Redis
    master and the PostgreSQL primary for longer than detection + the window, then heal. Checker:
    the same servers are primaries, no failover alert fired nor action started, no acknowledged
    write lost, no double primary, writes acknowledged through the write LBs all along."""
    return watcher_partition(demo, deadline, (CUT_VANTAGE,))


def watcher_partition(demo: DemoStack, deadline: float, cut: Sequence[str]) -> DrillResult:
    """The watcher-partition drill cutting the vantage points ``cut`` (``watcher-N``: the demo's
    netns watchers). A majority cut makes the failover alerts fire: the replicas, which still see
    the primaries, must then make the actions refuse (``outcomes`` in each engine's checker)."""
    if len(demo.watchers) < len(cut) or demo.chain is None:
        raise StackError("watcher-partition needs the demo built with netns_watchers (root, ip netns)")
    result = DrillResult("watcher-partition", time.time())
    prom = demo.chain.prometheus
    nets = [demo.watchers[int(v.removeprefix("watcher-")) - 1].net for v in cut]
    vantages = "|".join(cut)
    redis_old, pg_old = redis_masters(demo)[0], pg_primaries(demo)[0]
    drill_tables(demo.pg[pg_old], ("drill_lb", "drill_probe"))
    # another partition on the same stack writes the same ids again: start from empty tables
    demo.pg[pg_old].sql("TRUNCATE drill_lb, drill_probe")
    redis_lb = RedisAckWrites(demo.redis_write.port, demo.redis_password, "drill:lb")
    pg_lb = PgAckWrites(demo.pg_write.port, demo.pg_app_password, "drill_lb")
    writers = {"redis": Writer(redis_lb), "postgres": Writer(pg_lb)}
    probers = {"redis": redis_probers(demo), "postgres": pg_probers(demo)}
    threads = [*writers.values(), *probers["redis"], *probers["postgres"]]
    for thread in threads:
        thread.start()
    sampler = PrimarySampler(demo)
    wait_until(lambda: all(len(w.acked) > 20 for w in writers.values()), time.time() + 30)
    primaries = f'target=~"{redis_old}|{pg_old}"'
    cut_down = f'count(tierwatch_up{{vantage=~"{vantages}", {primaries}}} == 0)'
    others_up = f'count(tierwatch_up{{vantage!~"{vantages}", {primaries}}} == 1)'
    seen: dict[str, str] = {}
    others: set[float | None] = set()
    result.failed_at = time.time()
    try:
        for net in nets:
            net.cut([demo.redis[redis_old].port, demo.pg[pg_old].port])
        result.add(
            result.failed_at,
            f"failure: vantage {', '.join(cut)} cut off from {redis_old} and {pg_old} "
            f"(blackhole routes in namespace {', '.join(n.namespace for n in nets)})",
        )
        detected = wait_until(lambda: prom.value(cut_down) == 2 * len(cut), time.time() + 30)
        if detected:  # without it the drill proves nothing
            result.add(time.time(), f"detected: {vantages} sees both primaries down (Prometheus)")
        hold_until = time.time() + _seconds(WINDOW) + HOLD_BEYOND
        while time.time() < hold_until and time.time() < deadline:
            for alert in FAILOVER_ALERTS:
                state = prom.alert_state(alert)
                if state != "inactive" and seen.get(alert) != "firing":
                    seen[alert] = state
            others.add(prom.value(others_up))
            time.sleep(0.25)
    finally:
        for net in nets:
            net.heal()
    healed = time.time()
    result.add(healed, f"healed: routes of {vantages} restored")
    # the watcher's circuit breaker tries an unreachable server again only after reset_timeout (30 s)
    back = time.time() + 60
    for vantage in cut:
        up = f'count(tierwatch_up{{vantage="{vantage}", {primaries}}} == 1)'
        if wait_until(lambda q=up: prom.value(q) == 2, back):
            result.add(time.time(), f"{vantage} sees both primaries up again")
    time.sleep(1)
    for thread in threads:
        thread.stop()
    end = time.time()
    result.keep_series(
        {e: [w] for e, w in writers.items()}, sampler, {e: accepting_over_time(p) for e, p in probers.items()}
    )
    entries = [
        e
        for e in audit(demo.chain)
        if e["ts"] >= result.failed_at and e.get("cluster") in _clusters("redis") | _clusters("postgres")
    ]
    started = [e for e in entries if e["event"] == "action_started"]
    outcomes = [e for e in entries if e["event"] == "outcome" and e.get("action")]
    for entry in started:
        result.add(entry["ts"], f"action: {entry.get('action')} started for {entry.get('target')}")
    checks = double_primary_checks(probers, result.failed_at, end)
    masters, pg_now = redis_masters(demo), pg_primaries(demo)
    result.primaries = {"redis": len(masters), "postgres": len(pg_now)}
    client = demo.redis[redis_old].client()
    acked = [f"drill:lb:{n}" for n, _ in writers["redis"].acked]
    checks["redis"].acked = len(acked)
    checks["redis"].acked_lost = len(acked) - present(client, acked)
    checks["redis"].unacked_lost = len(redis_lb.unacked) - present(client, redis_lb.unacked)
    ids = {row[0] for row in demo.pg[pg_old].sql("SELECT id FROM drill_lb")}
    pg_acked = {n for n, _ in writers["postgres"].acked}
    checks["postgres"].acked = len(pg_acked)
    checks["postgres"].acked_lost = len(pg_acked - ids)
    checks["postgres"].unacked_lost = len(set(pg_lb.unacked) - ids)
    for engine, old, now in (("redis", redis_old, masters), ("postgres", pg_old, pg_now)):
        check = checks[engine]
        check.extra = {
            "primary_kept": now == [old],
            "max_ack_gap_s": _max_gap([t for _, t in writers[engine].acked], result.failed_at, healed),
            "cut_s": round(healed - result.failed_at, 2),
            "failover_alerts": {a: s for a, s in seen.items() if engine[:5] in a.lower()},
            "failover_actions": len([e for e in started if e.get("cluster") in _clusters(engine)]),
            "outcomes": [
                f"{e['action']}: {e.get('outcome')} ({str(e.get('detail'))[:80]})"
                for e in outcomes
                if e.get("cluster") in _clusters(engine)
            ],
            "other_vantages_saw_primaries_up": sorted(v for v in others if v is not None),
        }
    result.recovered = (
        detected
        and all(c.extra["primary_kept"] and c.extra["max_ack_gap_s"] <= MAX_ACK_GAP for c in checks.values())
        and not any(state == "firing" for state in seen.values())
        and not started
    )
    return apply_checks(result, checks)


def _clusters(engine: str) -> set[str]:
    return {"cache-main"} if engine == "redis" else {"main-db"}


FAULT_DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {
    "redis-pause": drill_redis_pause,
    "pg-pause": drill_pg_pause,
    "old-primary-return": drill_old_primary_return,
    "watcher-partition": drill_watcher_partition,
}
PARTITION_DRILLS = ("watcher-partition",)  # nothing fails over, so nothing rejoins
