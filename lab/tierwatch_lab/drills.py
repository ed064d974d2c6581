"""``tierwatch demo drill SCENARIO``: break the demo stack on purpose and watch the kit repair it.

Each drill starts a demo stack of its own (demo.build), runs a writer that records every acknowledged
write, causes the failure, waits until the stack has recovered by itself, and prints a timeline —
failure, detection (the exporter's target_down), alert delivered (the recovery service's inbox),
action started and finished, recovered — plus the acknowledged writes lost and the number of
primaries left.

Acknowledged means durable on more than one server: a Redis write counts once ``WAIT 1`` confirms a
replica has it; a PostgreSQL write once its commit returns (the demo's primary commits synchronously
to ANY 1 of its replicas).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tierwatch.clients.haproxy import HAProxyError, parse_show_stat

from .demo import APP_BACKEND, DemoStack, build
from .stack import Stack, StackError, wait_for
from .stack.chain import audit

# one attempt is one try: a client that retried internally would count a write begun before the
# failure as one accepted after it
NO_RETRY = Retry(NoBackoff(), 0)

SCENARIOS = {
    "redis-master": "kill the Redis master (SIGKILL)",
    "pg-primary": "kill the PostgreSQL primary (SIGKILL of the postmaster)",
    "app-instance": "kill app server es-1",
    "active-lb": "kill the active load balancer (lb-1)",
    "region": "lose the whole primary region's app servers (es-1, es-2)",
    "slow-app": "app server es-1 passes its health checks but is slow and fails half the real requests",
    # drills_faults.py
    "redis-pause": "SIGSTOP the Redis master longer than the detection window, then SIGCONT",
    "pg-pause": "SIGSTOP all processes of the PostgreSQL primary beyond the detection window, then SIGCONT",
    "old-primary-return": "kill the Redis master and the PostgreSQL primary, restart both after the failover",
    "watcher-partition": "cut one vantage point's watcher (network namespace) off from both primaries",
}


class Writer(threading.Thread):
    """Writes continuously through a write address; remembers which writes were acknowledged and when."""

    def __init__(self, attempt: Callable[[int], bool], pause: float = 0.02):
        super().__init__(daemon=True)
        self.attempt = attempt
        self.pause = pause
        self.acked: list[tuple[int, float]] = []  # (write number, when its attempt started)
        self.failures = 0
        self.failed: list[float] = []  # when each failed attempt started
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            started = time.time()
            try:
                ok = self.attempt(n)
            except Exception:  # noqa: BLE001 - every failed write is data for the drill
                ok = False
            if ok:
                self.acked.append((n, started))
            else:
                self.failures += 1
                self.failed.append(started)
                time.sleep(0.05)
            time.sleep(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def first_ack_after(self, moment: float) -> float | None:
        """Start time of the first acknowledged write attempted after the outage that followed
        ``moment`` (its first failed write), or after ``moment`` if no write failed. A dying primary
        may still acknowledge a write or two (PostgreSQL backends outlive a killed postmaster for a
        moment): that is not a recovery."""
        outage = next((at for at in self.failed if at > moment), moment)
        return next((at for _, at in self.acked if at > outage), None)


def app_redis_client(port: int, password: str) -> redis.Redis:
    """A client of a Redis write address that fails within 0.5 s and never retries by itself."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=NO_RETRY,
    )


class RedisWrites:
    """SET through the write address, acknowledged once WAIT confirms a replica has it."""

    def __init__(self, port: int, password: str):
        self.port, self.password = port, password
        self.client: redis.Redis | None = None

    def __call__(self, n: int) -> bool:
        if self.client is None:
            self.client = app_redis_client(self.port, self.password)
        try:
            self.client.set(f"drill:{n}", n)
            return int(self.client.execute_command("WAIT", 1, 250)) >= 1
        except redis.RedisError:
            self.client.close()
            self.client = None
            return False


def app_pg_connection(port: int, password: str) -> psycopg.Connection[Any]:
    """An autocommit connection of the demo's ``app`` user to a write address, failing within 1 s."""
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname="postgres",
        user="app",
        password=password,
        connect_timeout=1,
        autocommit=True,
    )


class PgWrites:
    """INSERT through the write address; acknowledged when the (synchronous) commit returns."""

    def __init__(self, port: int, password: str):
        self.port, self.password = port, password
        self.conn: psycopg.Connection[Any] | None = None

    def __call__(self, n: int) -> bool:
        try:
            if self.conn is None:
                self.conn = app_pg_connection(self.port, self.password)
                self.conn.execute("SET statement_timeout = 2000")
            self.conn.execute("INSERT INTO drill_writes (id) VALUES (%s)", (n,))
            return True
        except psycopg.Error:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return False


class HttpRequests:
    """GET /work through the VIP; 'acknowledged' = a 2xx answer. Remembers who served it."""

    def __init__(self, url: str):
        self.url = url
        self.served: list[tuple[float, str, str]] = []

    def __call__(self, n: int) -> bool:
        try:
            response = httpx.get(self.url, timeout=1.0, headers={"Connection": "close"})
        except httpx.HTTPError:
            return False
        if response.status_code >= 300:
            return False
        self.served.append(
            (time.time(), response.headers.get("x-served-by", ""), response.headers.get("x-backend", ""))
        )
        return True


@dataclass
class DrillResult:
    """What one drill saw."""

    scenario: str
    failed_at: float
    timeline: list[tuple[float, str]] = field(default_factory=list)
    acked: int = 0
    lost: int = 0
    primaries: dict[str, int] = field(default_factory=dict)
    recovered: bool = False
    detail: str = ""
    faults: dict[str, Any] = field(default_factory=dict)  # drills_faults.py: its checker's figures per engine

    def add(self, at: float | None, what: str) -> None:
        if at is not None:
            self.timeline.append((at, what))

    def render(self) -> str:
        lines = [f"drill {self.scenario}: {SCENARIOS[self.scenario]}"]
        for at, what in sorted(self.timeline):
            lines.append(f"  {at - self.failed_at:+8.2f}s  {what}")
        lines.append(f"  acknowledged writes: {self.acked}, lost: {self.lost}")
        if self.primaries:
            lines.append("  primaries now: " + ", ".join(f"{k}={v}" for k, v in self.primaries.items()))
        lines.append(
            f"  result: {'RECOVERED' if self.recovered else 'NOT RECOVERED'}"
            + (f" ({self.detail})" if self.detail else "")
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "recovered": self.recovered,
            "acked": self.acked,
            "lost": self.lost,
            "primaries": self.primaries,
            "detail": self.detail,
            **({"faults": self.faults} if self.faults else {}),
            "timeline": [
                {"seconds": round(at - self.failed_at, 3), "event": what}
                for at, what in sorted(self.timeline)
            ],
        }


def _exporter_events(demo: DemoStack) -> list[dict[str, Any]]:
    assert demo.chain is not None
    log = demo.chain.exporter.process.log_path
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def _chain_timeline(demo: DemoStack, result: DrillResult, targets: set[str], alerts: set[str]) -> None:
    """Detection, delivery, action and outcome times from the exporter's log and the audit trail
    (waits up to 60 s for the action's outcome, which comes after its verification)."""
    assert demo.chain is not None
    after = result.failed_at
    chain = demo.chain
    _wait(
        lambda: any(
            e["event"] == "outcome" and e.get("alert") in alerts and e["ts"] >= after for e in audit(chain)
        ),
        time.time() + 60,
    )
    for event in _exporter_events(demo):
        if event.get("event") == "target_down" and event.get("target") in targets and event["ts"] >= after:
            result.add(event["ts"], f"detected: exporter saw {event['target']} down ({event.get('reason')})")
            targets = targets - {event["target"]}
    seen: set[str] = set()
    for entry in audit(demo.chain):
        if entry["ts"] < after:
            continue
        kind, alert = entry["event"], entry.get("alert", "")
        if kind == "alert_accepted" and alert in alerts and ("accepted", alert) not in seen:
            seen.add(("accepted", alert))  # type: ignore[arg-type]
            result.add(entry["ts"], f"alert: {alert} delivered to the recovery service")
        elif kind == "action_started" and alert in alerts:
            result.add(
                entry["ts"],
                f"action: {entry.get('action')} started for {entry.get('target') or entry.get('cluster')}",
            )
        elif kind == "outcome" and alert in alerts:
            result.add(
                entry["ts"], f"action: {entry.get('action')} {entry.get('outcome')} — {entry.get('detail')}"
            )


def _role(server: Any) -> str | None:
    try:
        return str(server.client(socket_timeout=1).info("replication")["role"])
    except redis.RedisError:
        return None


def _redis_masters(demo: DemoStack) -> list[str]:
    return [name for name, server in demo.redis.items() if _role(server) == "master"]


def _pg_primaries(demo: DemoStack) -> list[str]:
    primaries = []
    for name, server in demo.pg.items():
        try:
            if not server.in_recovery():
                primaries.append(name)
        except (psycopg.Error, OSError, StackError):
            continue
    return primaries


def drill_redis_master(demo: DemoStack, deadline: float) -> DrillResult:
    old = _redis_masters(demo)[0]
    writer = Writer(RedisWrites(demo.redis_write.port, demo.redis_password))
    writer.start()
    wait_for(lambda: len(writer.acked) > 20, 20, "writes flowing")
    result = DrillResult("redis-master", time.time())
    demo.redis[old].process.kill()
    result.add(result.failed_at, f"failure: killed Redis master {old}")

    def recovered() -> bool:
        masters = [m for m in _redis_masters(demo) if m != old]
        return bool(masters) and writer.first_ack_after(result.failed_at) is not None

    result.recovered = _wait(recovered, deadline)
    time.sleep(1)
    writer.stop()
    result.add(writer.first_ack_after(result.failed_at), "recovered: writes acknowledged again")
    masters = _redis_masters(demo)
    result.primaries = {"redis": len(masters)}
    if masters:
        client = demo.redis[masters[0]].client()
        keys = [f"drill:{n}" for n, _ in writer.acked]
        present = sum(int(client.exists(*keys[i : i + 500])) for i in range(0, len(keys), 500))
        result.acked, result.lost = len(keys), len(keys) - present
    _chain_timeline(demo, result, {old}, {"RedisMasterDown", "RedisNoMaster"})
    return result


def drill_pg_primary(demo: DemoStack, deadline: float) -> DrillResult:
    old = _pg_primaries(demo)[0]
    demo.pg[old].sql(
        "CREATE TABLE IF NOT EXISTS drill_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    demo.pg[old].sql("GRANT INSERT, SELECT ON drill_writes TO app")
    writer = Writer(PgWrites(demo.pg_write.port, demo.pg_app_password))
    writer.start()
    wait_for(lambda: len(writer.acked) > 20, 30, "writes flowing")
    result = DrillResult("pg-primary", time.time())
    demo.pg[old].process.kill()
    result.add(result.failed_at, f"failure: killed PostgreSQL primary {old}")

    def recovered() -> bool:
        return (
            bool([p for p in _pg_primaries(demo) if p != old])
            and writer.first_ack_after(result.failed_at) is not None
        )

    result.recovered = _wait(recovered, deadline)
    time.sleep(1)
    writer.stop()
    result.add(writer.first_ack_after(result.failed_at), "recovered: writes committed again")
    primaries = _pg_primaries(demo)
    result.primaries = {"postgres": len(primaries)}
    if primaries:
        ids = {row[0] for row in demo.pg[primaries[0]].sql("SELECT id FROM drill_writes")}
        acked = {n for n, _ in writer.acked}
        result.acked, result.lost = len(acked), len(acked - ids)
    _chain_timeline(demo, result, {old}, {"PostgresPrimaryDown", "PostgresNoPrimary"})
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
    result.recovered = _wait(lambda: _answers(demo.apps["es-1"].url) and _server_up(demo, "es-1"), deadline)
    writer.stop()
    if result.recovered:
        result.add(time.time(), "recovered: es-1 restarted and back in the LBs")
    result.acked, result.lost = len(writer.acked), 0
    result.detail = f"{writer.failures} requests through the VIP failed during the drill"
    _chain_timeline(demo, result, {"es-1"}, {"AppInstanceDown"})
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

    result.recovered = _wait(standby_serving, deadline)
    served = next((at for at, lb, _ in requests.served if at > result.failed_at and lb == "lb-2"), None)
    result.add(served, "recovered: the standby lb-2 serves the VIP")
    restarted = _wait(lambda: _answers(demo.lbs[0].url), min(deadline, time.time() + 30))
    writer.stop()
    if restarted:
        result.add(time.time(), "lb-1 restarted by the recovery service (now the standby... or active again)")
    result.acked, result.lost = len(writer.acked), 0
    result.detail = f"{writer.failures} requests through the VIP failed during the switch"
    _chain_timeline(demo, result, {"lb-1"}, {"LBActiveDown", "LBStandbyDown"})
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

    result.recovered = _wait(failed_over, deadline)
    writer.stop()
    result.add(
        next((at for at, _, b in requests.served if at > result.failed_at and b in ("es-3", "es-4")), None),
        "traffic served by the failover region",
    )
    result.acked, result.lost = len(writer.acked), 0
    result.detail = f"{writer.failures} requests through the VIP failed during the drill"
    _chain_timeline(demo, result, {"es-1", "es-2"}, {"AppRegionDown", "AppInstanceDown"})
    return result


def _failover_serving(requests: HttpRequests, after: float) -> bool:
    recent = [b for at, _, b in requests.served if at > after][-10:]
    return len(recent) >= 5 and all(b in ("es-3", "es-4") for b in recent)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 400
    except httpx.HTTPError:
        return False


def _wait(condition: Callable[[], bool], deadline: float) -> bool:
    while time.time() < deadline:
        try:
            if condition():
                return True
        except Exception:  # noqa: BLE001 - servers come and go during a drill
            pass
        time.sleep(0.05)
    return False


def drill_slow_app(demo: DemoStack, deadline: float) -> DrillResult:
    """The real-traffic drill (drills_traffic.py: imported here, which imports this module)."""
    from .drills_traffic import drill_slow_app as run

    return run(demo, deadline)


DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {
    "redis-master": drill_redis_master,
    "pg-primary": drill_pg_primary,
    "app-instance": drill_app_instance,
    "active-lb": drill_active_lb,
    "region": drill_region,
    "slow-app": drill_slow_app,
}


def _fault_drill(scenario: str) -> Callable[[DemoStack, float], DrillResult]:
    """A drill of drills_faults.py (imported when it runs: that module imports this one)."""

    def run(demo: DemoStack, deadline: float) -> DrillResult:
        from .drills_faults import FAULT_DRILLS

        return FAULT_DRILLS[scenario](demo, deadline)

    return run


FAULT_SCENARIOS = ("redis-pause", "pg-pause", "old-primary-return", "watcher-partition")
DRILLS.update({s: _fault_drill(s) for s in FAULT_SCENARIOS})


def _ha_drill(scenario: str) -> Callable[[DemoStack, float], DrillResult]:
    """A drill of drills_ha.py (imported when it runs: that module imports this one)."""

    def run(demo: DemoStack, deadline: float) -> DrillResult:
        from .drills_ha import HA_DRILLS

        return HA_DRILLS[scenario](demo, deadline)

    return run


SCENARIOS["kill-alertmanager-peer"] = "kill -9 an Alertmanager peer, then the Redis master (drills_ha.py)"
SCENARIOS["kill-recovery-leader"] = "kill the Redis master, then kill -9 the recovery leader (drills_ha.py)"
SCENARIOS["kill-recovery-leader-pg"] = "kill the PostgreSQL primary, then kill -9 the recovery leader"
SCENARIOS["etcd-member-loss"] = "kill an etcd member during a Redis failover, then lose etcd quorum"
SCENARIOS["kill-prometheus-replica"] = "kill the Redis master, then kill -9 one Prometheus of the pair"
SCENARIOS["kill-exporter-vantage"] = "kill the Redis master, then kill -9 one of two exporters (vantages)"
HA_SCENARIOS = (
    "kill-alertmanager-peer",
    "kill-recovery-leader",
    "kill-recovery-leader-pg",
    "etcd-member-loss",
    "kill-prometheus-replica",
    "kill-exporter-vantage",
)
DRILLS.update({s: _ha_drill(s) for s in HA_SCENARIOS})
BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    s: {"recovery_replicas": 2}
    for s in ("kill-recovery-leader", "kill-recovery-leader-pg", "etcd-member-loss")
}
BUILD_OPTIONS["kill-prometheus-replica"] = {"prometheus_replicas": 2}
BUILD_OPTIONS["kill-exporter-vantage"] = {"vantages": ("a", "b")}
BUILD_OPTIONS["watcher-partition"] = {"netns_watchers": 2}  # three vantage points, one cut off
SCENARIOS["region-loss"] = (
    "lose the whole primary region with its data tier: SIGKILL of es-1, es-2, redis-a/b/c, pg-1/2/3 "
    "and the primary vantage's exporter; the LB pair, the write LBs and the chain stay (drills_region.py)"
)


def _drill_region_loss(demo: DemoStack, deadline: float) -> DrillResult:
    """The region-loss drill (drills_region.py, imported when it runs: it imports this module)."""
    from .drills_region import drill_region_loss

    return drill_region_loss(demo, deadline)


DRILLS["region-loss"] = _drill_region_loss
BUILD_OPTIONS["region-loss"] = {"vantages": ("primary", "failover")}  # one exporter per region

SCENARIOS["primary-partition"] = (
    "cut the Redis master, then the PostgreSQL primary, off with some of their clients (network namespaces)"
)


def _partition_drill(demo: DemoStack, deadline: float) -> DrillResult:
    """The primary-partition drill of drills_partition.py (imported when it runs: it imports this module)."""
    from .drills_partition import drill_primary_partition

    return drill_primary_partition(demo, deadline)


DRILLS["primary-partition"] = _partition_drill
BUILD_OPTIONS["primary-partition"] = {"isolable_primaries": True}  # the primaries in a namespace


def wait_until_watched(demo: DemoStack, timeout: float = 60) -> None:
    """Until Prometheus has every target up and no alert of the drills firing (a clean start)."""
    assert demo.chain is not None
    prometheus = demo.chain.prometheus
    wait_for(prometheus.targets_up, timeout, "Prometheus scraping the chain")
    wait_for(lambda: prometheus.value("min(tierwatch_up)") == 1, timeout, "every target up in Prometheus")


def run_drill(scenario: str, stack: Stack | None = None, timeout: float = 90.0) -> DrillResult:
    """Start a demo stack, run one drill on it, stop the stack (unless one is given)."""
    own = stack is None
    stack = stack or Stack()
    try:
        demo = build(stack, **BUILD_OPTIONS.get(scenario, {}))
        wait_until_watched(demo)
        return DRILLS[scenario](demo, time.time() + timeout)
    finally:
        if own:
            stack.close()
