"""The region-loss drill (issue 13): the whole primary region dies at once, data tier included, and
the kit promotes in the failover region (the Redis backup master with its replica kept under it,
the PostgreSQL DR replica), through the opt-in regional allow-list entries of the demo.

Killed with SIGKILL: the primary region's app servers (es-1, es-2), Redis servers (redis-a, b, c),
PostgreSQL servers (pg-1, pg-2, pg-3, every process of each) and its vantage point's exporter
(vantage ``primary``). What stays: the LB pair, the write LBs, the failover region and the
monitoring chain (Prometheus, Alertmanager, the recovery service and the ``failover`` exporter),
as if they ran outside the lost region.

The checker is independent of the kit. Cross-region replication is asynchronous, so writers through
the write LBs sort each acknowledged write into one of two classes:
- **region-safe**: known to be in the failover region when acknowledged. Redis: ``WAIT`` confirmed
  every replica the master listed online, one of them in the failover region (or the master is
  itself there). PostgreSQL: after the commit, the DR replica's ``flush_lsn`` in
  ``pg_stat_replication`` reached the primary's WAL position (or the primary is the DR replica).
  Losing one of these fails the drill.
- **in-region only**: acknowledged (Redis ``WAIT 1``; PostgreSQL a synchronous commit) but not
  known to have crossed. Those lost are reported (the RPO of async cross-region replication), not
  failed.
Plus: exactly one promotion per engine, the new Redis master is the backup master with the backup
replica still under it, the DR replica is the PostgreSQL primary, writes acknowledged again, and
no time during which two servers acknowledged writes (per-server probers, drill_checker.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from .demo_stack import DemoStack
from .drill_checker import (
    PG_WRITE_TIMEOUT,
    FaultCheck,
    PgAckWrites,
    accepting_over_time,
    double_primary_checks,
    drill_tables,
    pg_probers,
    present,
    redis_probers,
    with_deadline,
)
from .drill_kit import (
    DrillResult,
    PgWrites,
    PrimarySampler,
    RedisWrites,
    Writer,
    app_redis_client,
    dns_line,
    exporter_events,
    pg_primaries,
    redis_masters,
    wait_until,
)
from .drills_backup import restore_from_backups
from .stack import StackError
from .stack.chain import audit

LOST_REGION = "primary"
REDIS_HEAD, REDIS_TAIL = "redis-d", "redis-e"  # the backup master and its replica (a cascade)
PG_DR = "pg-dr"
REGIONAL_ALERTS = {"RedisPrimaryRegionDown", "PostgresPrimaryRegionDown"}
ALERTS = REGIONAL_ALERTS | {"RedisMasterDown", "PostgresPrimaryDown", "RedisNoMaster", "PostgresNoPrimary"}
DR_WAIT = 0.3  # seconds a writer waits for the DR replica to flush a commit before calling it in-region
REFRESH = 1.0  # seconds between a Redis writer's looks at its master's replicas


class RedisRegionWrites:
    """SET then WAIT (every replica its master lists online) through one address. Acknowledged once
    one replica has it; region-safe once all of them have it and one of them (or the master) is in
    the failover region."""

    def __init__(self, port: int, password: str, prefix: str, failover_ports: set[int]):
        self.port, self.password, self.prefix = port, password, prefix
        self.failover_ports = failover_ports
        self.client: redis.Redis | None = None
        self.needed, self.crosses, self.looked = 1, False, 0.0
        self.region_safe: list[str] = []
        self.in_region: list[str] = []
        self.unacked: list[str] = []

    def _look(self, client: redis.Redis) -> None:
        info = client.info("replication")
        ports = {
            int(v["port"])
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        }
        own = int(client.info("server")["tcp_port"])
        self.needed = max(1, len(ports))
        self.crosses = own in self.failover_ports or bool(ports & self.failover_ports)
        self.looked = time.time()

    def __call__(self, n: int) -> bool:
        key = f"{self.prefix}:{n}"
        try:
            if self.client is None:
                self.client = app_redis_client(self.port, self.password)
            if time.time() - self.looked > REFRESH:
                self._look(self.client)
            self.client.set(key, n)
        except redis.RedisError:  # refused (NOREPLICAS, READONLY) or unreachable: nothing taken
            self._reset()
            return False
        try:
            got = int(self.client.execute_command("WAIT", self.needed, 250))
        except redis.RedisError:
            self._reset()
            got = 0
        if got < 1:
            self.unacked.append(key)
            return False
        (self.region_safe if got >= self.needed and self.crosses else self.in_region).append(key)
        return True

    def _reset(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None
        self.looked = 0.0


class PgRegionWrites:
    """INSERT (autocommit) through one address; acknowledged when the synchronous commit returns
    (as drill_checker.PgAckWrites); region-safe when the DR replica then reports flushing the
    primary's WAL position within DR_WAIT (or the server is the DR replica itself)."""

    def __init__(self, port: int, password: str, table: str, dr_port: int):
        self.writes = PgAckWrites(port, password, table)
        self.dr_port = dr_port
        self.region_safe: list[int] = []
        self.in_region: list[int] = []

    @property
    def unacked(self) -> list[int]:
        return self.writes.unacked

    def __call__(self, n: int) -> bool:
        if not self.writes(n):
            return False
        conn = self.writes.conn
        safe = False
        if conn is not None:
            safe_box: list[bool] = []
            done = with_deadline(conn, lambda c: safe_box.append(self._crossed(c)), PG_WRITE_TIMEOUT)
            safe = done and bool(safe_box and safe_box[0])
            if not done:
                with contextlib.suppress(Exception):
                    conn.close()
                self.writes.conn = None
        (self.region_safe if safe else self.in_region).append(n)
        return True

    def _crossed(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute("SELECT inet_server_port(), pg_current_wal_lsn()::text").fetchone()
        if row is None:
            return False
        if row[0] == self.dr_port:
            return True
        query = (
            "SELECT coalesce(bool_or(flush_lsn >= %s::pg_lsn), false) FROM pg_stat_replication "
            "WHERE application_name = %s"
        )
        deadline = time.time() + DR_WAIT
        while True:
            flushed = conn.execute(query, (row[1], PG_DR)).fetchone()
            if flushed and flushed[0]:
                return True
            if time.time() >= deadline:
                return False
            time.sleep(0.01)


def _kill_region(demo: DemoStack, result: DrillResult) -> None:
    """SIGKILL every server of the primary region and its vantage point's exporter."""
    killed: list[str] = []
    for name, app in demo.apps.items():
        if name in ("es-1", "es-2"):
            app.process.kill()
            killed.append(name)
    for name, server in demo.redis.items():
        if name not in (REDIS_HEAD, REDIS_TAIL):
            server.process.kill()
            killed.append(name)
    for name, pg in demo.pg.items():
        if name != PG_DR:
            pg.process.kill()
            killed.append(name)
    assert demo.chain is not None
    if len(demo.chain.exporters) > 1:  # built with vantages (primary, failover)
        demo.chain.exporters[0].process.kill()
        killed.append("exporter (vantage primary)")
    result.add(result.failed_at, f"failure: lost the primary region (SIGKILL of {', '.join(killed)})")


def _events(demo: DemoStack) -> list[dict[str, Any]]:
    """The surviving exporter's JSON log events (the last exporter: vantage failover)."""
    assert demo.chain is not None
    return exporter_events(demo, demo.chain.exporters[-1] if demo.chain.exporters else None)


def drill_region_loss(demo: DemoStack, deadline: float) -> DrillResult:
    """Lose the whole primary region; check the regional failover of both data engines."""
    if demo.chain is None:
        raise StackError("region-loss needs the demo's chain")
    result = DrillResult("region-loss", time.time())
    redis_old, pg_old = redis_masters(demo)[0], pg_primaries(demo)[0]
    primary = demo.pg[pg_old]
    drill_tables(primary, ("drill_lb", "drill_probe"))
    primary.sql("GRANT pg_read_all_stats TO app")  # the writer reads the DR replica's flush_lsn
    demo.pg[PG_DR].wait_caught_up()
    failover_ports = {demo.redis[REDIS_HEAD].port, demo.redis[REDIS_TAIL].port}
    redis_w = RedisRegionWrites(demo.redis_write.port, demo.redis_password, "drill:lb", failover_ports)
    pg_w = PgRegionWrites(demo.pg_write.port, demo.pg_app_password, "drill_lb", demo.pg[PG_DR].port)
    writers = {"redis": Writer(redis_w), "postgres": Writer(pg_w)}
    named = _by_name_writers(demo)  # clients that find each primary by name (DNS): timed, not classified
    probers = {"redis": redis_probers(demo), "postgres": pg_probers(demo)}
    threads = [*writers.values(), *named.values(), *probers["redis"], *probers["postgres"]]
    for thread in threads:
        thread.start()
    sampler = PrimarySampler(demo)
    wait_until(
        lambda: len(redis_w.region_safe) > 20 and len(pg_w.region_safe) > 20,
        time.time() + 30,
    )
    result.failed_at = time.time()
    _kill_region(demo, result)
    done = time.time()

    def settled() -> bool:
        return (
            redis_masters(demo) == [REDIS_HEAD]
            and pg_primaries(demo) == [PG_DR]
            and _follows(demo, REDIS_TAIL, REDIS_HEAD)
            and all(w.first_ack_after(done) is not None for w in [*writers.values(), *named.values()])
            # the app record moves last: after the gradual traffic shift has emptied the region
            and (demo.dns is None or demo.dns.resolver("web")() == demo.apps["es-3"].port)
        )

    wait_until(settled, deadline)
    time.sleep(1)
    for thread in threads:
        thread.stop()
    end = time.time()
    result.keep_series(
        {engine: [writer, named.get(engine)] for engine, writer in writers.items()},
        sampler,
        {engine: accepting_over_time(group) for engine, group in probers.items()},
    )
    checks = double_primary_checks(probers, result.failed_at, end)
    masters, pg_now = redis_masters(demo), pg_primaries(demo)
    result.primaries = {"redis": len(masters), "postgres": len(pg_now)}
    if masters == [REDIS_HEAD]:
        client = demo.redis[REDIS_HEAD].client()
        _classes(
            checks["redis"], redis_w.region_safe, redis_w.in_region, redis_w.unacked, _redis_lookup(client)
        )
    if pg_now == [PG_DR]:
        ids = {row[0] for row in demo.pg[PG_DR].sql("SELECT id FROM drill_lb")}
        _classes(
            checks["postgres"],
            pg_w.region_safe,
            pg_w.in_region,
            pg_w.unacked,
            lambda keys: sum(k in ids for k in keys),
        )
    entries = [e for e in audit(demo.chain) if e["ts"] >= result.failed_at]
    detected = _detected(demo, result, {redis_old, pg_old})
    for engine, cluster, new in (("redis", "cache-main", REDIS_HEAD), ("postgres", "main-db", PG_DR)):
        check = checks[engine]
        promoted = [e for e in entries if e["event"] == "promoted" and e.get("cluster") == cluster]
        again = writers[engine].first_ack_after(done)
        check.extra.update(
            promotions=len(promoted),
            promoted=[e.get("target") for e in promoted],
            by_alert=[e.get("alert") for e in promoted],
            new_primary=new if (masters if engine == "redis" else pg_now) == [new] else None,
            detection_s=_since(result.failed_at, detected.get(engine)),
            promotion_s=_since(result.failed_at, promoted[0]["ts"] if promoted else None),
            writes_again_s=_since(result.failed_at, again),
            kill_s=_since(result.failed_at, done),  # how long killing the region's processes took
            refused=[
                f"{e.get('alert')}: {str(e.get('detail'))[:90]}"
                for e in entries
                if e["event"] == "outcome" and e.get("cluster") == cluster and e.get("outcome") == "refused"
            ],
        )
        for e in promoted:
            result.add(e["ts"], f"promoted: {e.get('target')} ({cluster}, alert {e.get('alert')})")
        result.add(again, f"{engine}: writes acknowledged again through the write LB")
        if engine in named:
            by_name = named[engine].first_ack_after(done)
            check.extra["writes_by_name_s"] = _since(result.failed_at, by_name)
            result.add(by_name, f"{engine}: recovered by name: writes acknowledged again (DNS)")
        moved = [e for e in entries if e["event"] == "dns_updated" and e.get("cluster") == cluster]
        check.extra["dns_s"] = _since(result.failed_at, moved[0]["ts"] if moved else None)
    checks["redis"].extra["cascade_kept"] = _follows(demo, REDIS_TAIL, REDIS_HEAD)
    for entry in entries:
        if entry.get("alert") not in ALERTS:
            continue
        if entry["event"] == "alert_accepted" and entry["alert"] in REGIONAL_ALERTS:
            result.add(entry["ts"], f"alert: {entry['alert']} delivered to the recovery service")
        elif entry["event"] == "action_started":
            result.add(entry["ts"], f"action: {entry.get('action')} started for {entry['alert']}")
        elif entry["event"] == "outcome" and entry.get("action"):
            detail = str(entry.get("detail"))[:70]
            result.add(entry["ts"], f"action: {entry['action']} {entry.get('outcome')} — {detail}")
        elif entry["event"] in ("dns_updated", "dns_update_failed"):
            result.add(entry["ts"], dns_line(entry))
    result.acked = sum(c.acked for c in checks.values())
    result.lost = sum(c.acked_lost for c in checks.values())
    result.faults = {name: {**vars(c)} for name, c in checks.items()}
    if demo.dns is not None:  # what each record names now, read from the zone's server
        expected = {
            "cache-main": demo.redis[REDIS_HEAD].port,
            "main-db": demo.pg[PG_DR].port,
            "web": demo.apps["es-3"].port,  # the failover region's entry in the demo's zone
        }
        result.faults["dns"] = {
            cluster: {"names": demo.dns.resolver(cluster)(), "expected": port}
            for cluster, port in expected.items()
        }
    result.detail = "; ".join(
        f"{name}: region-safe acknowledged {c.extra['region_safe_acked']} lost {c.acked_lost}, "
        f"in-region-only acknowledged {c.extra['in_region_acked']} "
        f"lost {c.extra['in_region_lost']} (async RPO), "
        f"unacknowledged lost {c.unacked_lost}, double-primary {c.double_primary_s:g}s"
        for name, c in checks.items()
        if "region_safe_acked" in c.extra
    )
    if demo.backups is not None:  # the data is also in the failover region's backup repository
        result.faults["restore"] = restore_from_backups(demo, result)
    result.recovered = (
        all(c.extra["promotions"] == 1 and c.extra["new_primary"] for c in checks.values())
        and checks["redis"].extra["cascade_kept"]
        and all("region_safe_acked" in c.extra and c.acked_lost == 0 for c in checks.values())
        and all(c.double_primary_s == 0 for c in checks.values())
        and all(c.extra["writes_again_s"] is not None for c in checks.values())
        and all(checks[engine].extra.get("writes_by_name_s") is not None for engine in named)
        and ("restore" not in result.faults or result.faults["restore"]["exit"] == 0)
    )
    return result


def _by_name_writers(demo: DemoStack) -> dict[str, Writer]:
    """A Redis and a PostgreSQL writer that connect to whatever the demo's records name (none without
    DNS); the PostgreSQL one writes into drill_writes."""
    if demo.dns is None:
        return {}
    primary = demo.pg[pg_primaries(demo)[0]]
    primary.sql(
        "CREATE TABLE IF NOT EXISTS drill_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    primary.sql("GRANT INSERT, SELECT ON drill_writes TO app")
    return {
        "redis": Writer(RedisWrites(demo.dns.resolver("cache-main"), demo.redis_password, "drill-dns")),
        "postgres": Writer(PgWrites(demo.dns.resolver("main-db"), demo.pg_app_password)),
    }


def _classes(
    check: FaultCheck,
    safe: list[Any],
    in_region: list[Any],
    unacked: list[Any],
    present: Callable[[list[Any]], int],
) -> None:
    """Fill ``check`` with the two acknowledged classes and the unacknowledged writes lost."""
    check.acked = len(safe) + len(in_region)
    check.acked_lost = len(safe) - present(safe)  # region-safe lost: must be 0
    check.unacked_lost = len(unacked) - present(unacked)
    check.extra.update(
        region_safe_acked=len(safe),
        in_region_acked=len(in_region),
        in_region_lost=len(in_region) - present(in_region),
    )


def _redis_lookup(client: redis.Redis) -> Callable[[list[Any]], int]:
    return lambda keys: present(client, list(keys)) if keys else 0


def _follows(demo: DemoStack, replica: str, master: str) -> bool:
    try:
        info = demo.redis[replica].client(socket_timeout=1).info("replication")
    except redis.RedisError:
        return False
    return (
        info.get("role") == "slave"
        and int(info.get("master_port", 0)) == demo.redis[master].port
        and info.get("master_link_status") == "up"
    )


def _detected(demo: DemoStack, result: DrillResult, old: set[str]) -> dict[str, float]:
    """When the surviving exporter first saw each engine's old primary down."""
    found: dict[str, float] = {}
    for event in _events(demo):
        target = event.get("target")
        if event.get("event") != "target_down" or target not in old or event["ts"] < result.failed_at:
            continue
        engine = "redis" if str(target).startswith("redis") else "postgres"
        if engine not in found:
            found[engine] = event["ts"]
            result.add(event["ts"], f"detected: exporter (vantage failover) saw {target} down")
    return found


def _since(start: float, at: float | None) -> float | None:
    return round(at - start, 2) if at is not None else None


REGION_DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {"region-loss": drill_region_loss}
