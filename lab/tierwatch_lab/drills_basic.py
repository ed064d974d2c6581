"""The drills of the stack's own failures: the Redis master and the PostgreSQL primary killed (writers
record every acknowledged write, read back from the new primary), an app server, the active LB and
the primary region's app servers killed (requests through the VIP). ``slow-app`` is drills_traffic.py;
the building blocks are drill_kit.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tierwatch.clients.haproxy import HAProxyError, parse_show_stat

from .demo_stack import APP_BACKEND, DemoStack
from .drill_kit import (
    DrillResult,
    HttpRequests,
    PgWrites,
    PrimarySampler,
    RedisWrites,
    Writer,
    chain_timeline,
    pg_primaries,
    redis_masters,
    wait_until,
)
from .stack import wait_for
from .stack.chain import audit

BY_NAME_OFFSET = 1_000_000_000  # the by-name writer's row ids (the LB writer's start at 1)


def start_writers(
    through_lb: Callable[[int], bool], by_name: Callable[[int], bool] | None, timeout: float
) -> tuple[Writer, Writer | None]:
    """Start a writer through the write LB and, with DNS, one by name; wait until both write."""
    writer = Writer(through_lb)
    named = Writer(by_name) if by_name is not None else None
    for w in (writer, named):
        if w is not None:
            w.start()
    wait_for(
        lambda: len(writer.acked) > 20 and (named is None or len(named.acked) > 20), timeout, "writes flowing"
    )
    return writer, named


def drill_redis_master(demo: DemoStack, deadline: float) -> DrillResult:
    old = redis_masters(demo)[0]
    through_lb = RedisWrites(demo.redis_write.port, demo.redis_password)
    # a second client finds the master by name (DNS), as clients that bypass the LB do
    by_name = (
        RedisWrites(demo.dns.resolver("cache-main"), demo.redis_password, "drill-dns") if demo.dns else None
    )
    sampler = PrimarySampler(demo, ("redis",))
    writer, named = start_writers(through_lb, by_name, 20)
    result = DrillResult("redis-master", time.time())
    demo.redis[old].process.kill()
    result.add(result.failed_at, f"failure: killed Redis master {old}")

    def recovered() -> bool:
        masters = [m for m in redis_masters(demo) if m != old]
        return bool(masters) and all(
            w.first_ack_after(result.failed_at) is not None for w in (writer, named) if w is not None
        )

    result.recovered = wait_until(recovered, deadline)
    time.sleep(1)
    writer.stop()
    result.add(writer.first_ack_after(result.failed_at), "recovered: writes acknowledged again")
    keys = through_lb.keys(writer)
    if named is not None and by_name is not None:
        named.stop()
        result.add(named.first_ack_after(result.failed_at), "recovered by name: writes acknowledged again")
        keys += by_name.keys(named)
    result.keep_series({"redis": [writer, named]}, sampler)
    masters = redis_masters(demo)
    result.primaries = {"redis": len(masters)}
    if masters:
        client = demo.redis[masters[0]].client()
        present = sum(int(client.exists(*keys[i : i + 500])) for i in range(0, len(keys), 500))
        result.acked, result.lost = len(keys), len(keys) - present
    chain_timeline(demo, result, {old}, {"RedisMasterDown", "RedisNoMaster"})
    return result


def drill_pg_primary(demo: DemoStack, deadline: float) -> DrillResult:
    old = pg_primaries(demo)[0]
    demo.pg[old].sql(
        "CREATE TABLE IF NOT EXISTS drill_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    demo.pg[old].sql("GRANT INSERT, SELECT ON drill_writes TO app")
    through_lb = PgWrites(demo.pg_write.port, demo.pg_app_password)
    # a second client finds the primary by name (DNS); its rows are numbered from BY_NAME_OFFSET
    by_name = (
        PgWrites(demo.dns.resolver("main-db"), demo.pg_app_password, BY_NAME_OFFSET) if demo.dns else None
    )
    sampler = PrimarySampler(demo, ("postgres",))
    writer, named = start_writers(through_lb, by_name, 30)
    result = DrillResult("pg-primary", time.time())
    demo.pg[old].process.kill()
    result.add(result.failed_at, f"failure: killed PostgreSQL primary {old}")

    def recovered() -> bool:
        return bool([p for p in pg_primaries(demo) if p != old]) and all(
            w.first_ack_after(result.failed_at) is not None for w in (writer, named) if w is not None
        )

    result.recovered = wait_until(recovered, deadline)
    time.sleep(1)
    writer.stop()
    result.add(writer.first_ack_after(result.failed_at), "recovered: writes committed again")
    acked = through_lb.ids(writer)
    if named is not None and by_name is not None:
        named.stop()
        result.add(named.first_ack_after(result.failed_at), "recovered by name: writes committed again")
        acked |= by_name.ids(named)
    result.keep_series({"postgres": [writer, named]}, sampler)
    primaries = pg_primaries(demo)
    result.primaries = {"postgres": len(primaries)}
    if primaries:
        ids = {row[0] for row in demo.pg[primaries[0]].sql("SELECT id FROM drill_writes")}
        result.acked, result.lost = len(acked), len(acked - ids)
    chain_timeline(demo, result, {old}, {"PostgresPrimaryDown", "PostgresNoPrimary"})
    return result


def _server_up(demo: DemoStack, server: str) -> bool:
    """True if every LB that is alive reports ``server`` UP in the app backend."""
    states = []
    for lb in demo.lbs:
        if not lb.process.running() and not Path(lb.stats_socket).exists():
            continue
        try:
            servers = parse_show_stat(lb.command("show stat")).servers(APP_BACKEND)
        except (OSError, HAProxyError):  # a dying LB answers half a table
            continue
        states += [servers[server].status] if server in servers else []
    return bool(states) and all(s.startswith("UP") for s in states)


def drill_app_instance(demo: DemoStack, deadline: float) -> DrillResult:
    requests = HttpRequests(demo.vip_url.replace("/health", "/work"))
    writer = Writer(requests, pause=0.05)
    writer.start()
    wait_for(lambda: _server_up(demo, "es-1"), 30, "es-1 UP in the LBs")
    result = DrillResult("app-instance", time.time())
    demo.apps["es-1"].process.kill()
    result.add(result.failed_at, "failure: killed app server es-1")
    result.recovered = wait_until(
        lambda: _answers(demo.apps["es-1"].url) and _server_up(demo, "es-1"), deadline
    )
    writer.stop()
    if result.recovered:
        result.add(time.time(), "recovered: es-1 restarted and back in the LBs")
    result.acked, result.lost = len(writer.acked), 0
    result.keep_series({"http": [writer]})
    result.detail = f"{writer.failures} requests through the VIP failed during the drill"
    chain_timeline(demo, result, {"es-1"}, {"AppInstanceDown"})
    return result


def drill_active_lb(demo: DemoStack, deadline: float) -> DrillResult:
    requests = HttpRequests(demo.vip_url.replace("/health", "/work"))
    writer = Writer(requests, pause=0.05)
    writer.start()
    wait_for(lambda: requests.served and requests.served[-1][1] == "lb-1", 20, "VIP served by lb-1")
    result = DrillResult("active-lb", time.time())
    demo.lbs[0].process.kill()
    result.add(result.failed_at, "failure: killed the active LB lb-1")

    def standby_serving() -> bool:
        return any(at > result.failed_at and lb == "lb-2" for at, lb, _ in requests.served)

    result.recovered = wait_until(standby_serving, deadline)
    served = next((at for at, lb, _ in requests.served if at > result.failed_at and lb == "lb-2"), None)
    result.add(served, "recovered: the standby lb-2 serves the VIP")
    restarted = wait_until(lambda: _answers(demo.lbs[0].url), min(deadline, time.time() + 30))
    writer.stop()
    if restarted:
        result.add(time.time(), "lb-1 restarted by the recovery service (now the standby... or active again)")
    result.acked, result.lost = len(writer.acked), 0
    result.keep_series({"http": [writer]})
    result.detail = f"{writer.failures} requests through the VIP failed during the switch"
    chain_timeline(demo, result, {"lb-1"}, {"LBActiveDown", "LBStandbyDown"})
    return result


def drill_region(demo: DemoStack, deadline: float) -> DrillResult:
    requests = HttpRequests(demo.vip_url.replace("/health", "/work"))
    writer = Writer(requests, pause=0.05)
    writer.start()
    wait_for(lambda: len(requests.served) > 10, 20, "traffic flowing")
    result = DrillResult("region", time.time())
    for name in ("es-1", "es-2"):
        demo.apps[name].process.kill()
    result.add(result.failed_at, "failure: lost the primary region's app servers es-1 and es-2")
    assert demo.chain is not None

    def failed_over() -> bool:
        outcomes = [
            e for e in audit(demo.chain) if e["event"] == "outcome" and e.get("action") == "regional_failover"
        ]  # type: ignore[arg-type]
        return any(o.get("outcome") == "succeeded" for o in outcomes) and _failover_serving(
            requests, result.failed_at
        )

    result.recovered = wait_until(failed_over, deadline)
    writer.stop()
    result.add(
        next((at for at, _, b in requests.served if at > result.failed_at and b in ("es-3", "es-4")), None),
        "traffic served by the failover region",
    )
    result.acked, result.lost = len(writer.acked), 0
    result.keep_series({"http": [writer]})
    result.detail = f"{writer.failures} requests through the VIP failed during the drill"
    chain_timeline(demo, result, {"es-1", "es-2"}, {"AppRegionDown", "AppInstanceDown"})
    return result


def _failover_serving(requests: HttpRequests, after: float) -> bool:
    recent = [b for at, _, b in requests.served if at > after][-10:]
    return len(recent) >= 5 and all(b in ("es-3", "es-4") for b in recent)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 400
    except httpx.HTTPError:
        return False


BASIC_DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {
    "redis-master": drill_redis_master,
    "pg-primary": drill_pg_primary,
    "app-instance": drill_app_instance,
    "active-lb": drill_active_lb,
    "region": drill_region,
}
