"""``pg-primary-patroni``: the PostgreSQL primary's node killed while Patroni is in charge.

A stack of its own (not the demo's): a 3-member lab etcd, a 3-member Patroni cluster (stack/patroni.py,
Patroni's fastest timing, ``synchronous_mode`` on so a failover loses no acknowledged commit), an
HAProxy write LB whose only ready server is Patroni's leader, and the whole chain (exporter →
Prometheus → Alertmanager → recovery service, the demo's 5 s window) watching the cluster with its
``patroni:`` block. The leader's node (Patroni and PostgreSQL) is SIGKILLed; Patroni's election moves
the primary, and the chain's ``pg_promote`` only waits for it, moves the write backend and verifies.
The drill records who promoted (Patroni's log, the audit trail: ``patroni_elected``, never
``promoted``), the acknowledged writes through the write LB and how many are missing afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import httpx

from .demo_stack import DemoStack
from .drill_kit import DrillResult, PgWrites, Writer, chain_timeline, wait_until
from .stack import Stack, wait_for
from .stack.chain import Chain, ChainTiming, audit, start_chain, write_lb_cluster
from .stack.etcd import start_etcd_cluster
from .stack.haproxy import HAProxy, start_write_lb
from .stack.patroni import FASTEST_TIMING, PatroniCluster, PatroniMember, start_patroni_cluster
from .stack.postgres import create_app_role

SCENARIO = "pg-primary-patroni"
CLUSTER = "main-db"
BACKEND = "be_pg_write"
WINDOW = "5s"
ALERTS = ("PostgresPrimaryDown", "PostgresNoPrimary")


@dataclass
class PatroniDrillStack:
    """The drill's started stack."""

    stack: Stack
    patroni: PatroniCluster
    write_lb: HAProxy
    chain: Chain
    app_password: str


def build_patroni_stack(stack: Stack) -> PatroniDrillStack:
    """etcd, Patroni (synchronous mode), the write LB on the leader, the app role, the chain."""
    etcd = start_etcd_cluster(stack, 3)
    patroni = start_patroni_cluster(stack, etcd, 3, scope=CLUSTER, **FASTEST_TIMING)
    leader = patroni.wait_leader()
    answer = httpx.patch(f"{leader.rest_url}/config", json={"synchronous_mode": True}, timeout=5)
    answer.raise_for_status()
    wait_for(lambda: _sync_standby(patroni), 60, "Patroni to choose a synchronous standby")
    app_password = create_app_role(leader, "app")  # type: ignore[arg-type] - only .connect() is used
    with leader.connect() as conn:
        conn.execute("CREATE TABLE drill_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        conn.execute("GRANT INSERT, SELECT ON drill_writes TO app")
    servers = [(m.name, m.pg_port) for m in patroni.members]
    write_lb = start_write_lb(stack, "lb-pg-write", BACKEND, servers, primary=leader.name)
    assert patroni.monitor_password_file is not None and patroni.admin_password_file is not None
    entry: dict[str, Any] = {
        "name": CLUSTER,
        "tier": "postgres",
        "password_file": str(patroni.monitor_password_file),
        "targets": [{"name": m.name, "region": "primary", "url": m.url()} for m in patroni.members],
        "patroni": {
            "scope": patroni.scope,
            "members": [{"target": m.name, "url": m.rest_url} for m in patroni.members],
        },
    }
    recovery = {
        "allow": {alert: "pg_promote" for alert in ALERTS},
        "cooldown": "0s",
        "action_timeout": "90s",
        "clusters": {
            CLUSTER: {
                "write_backend": BACKEND,
                "admin_user": patroni.admin_role,
                "admin_password_file": str(patroni.admin_password_file),
                "patroni_wait": "45s",
            }
        },
    }
    timing = ChainTiming(for_values=tuple((alert, WINDOW) for alert in ALERTS), breaker_reset="6s")
    chain = start_chain(
        stack, [entry], recovery, timing, recovery_only=[write_lb_cluster("write-lbs", [write_lb])]
    )
    return PatroniDrillStack(stack, patroni, write_lb, chain, app_password)


def _sync_standby(patroni: PatroniCluster) -> bool:
    doc = patroni.status() or {}
    return any(m.get("role") == "sync_standby" for m in doc.get("members", []))


def wait_until_watched(drill: PatroniDrillStack, timeout: float = 60) -> None:
    """Until Prometheus scrapes the exporter and sees every member up."""
    prometheus = drill.chain.prometheus
    wait_for(prometheus.targets_up, timeout, "Prometheus scraping the chain")
    wait_for(lambda: prometheus.value("min(tierwatch_up)") == 1, timeout, "every target up in Prometheus")


def drill_pg_primary_patroni(drill: PatroniDrillStack, deadline: float) -> DrillResult:
    """Kill the leader's node; wait until Patroni elected another and writes pass the write LB again."""
    patroni = drill.patroni
    old = patroni.wait_leader()
    through_lb = PgWrites(drill.write_lb.port, drill.app_password)
    writer = Writer(through_lb)
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) > 20, 30, "writes flowing")
        result = DrillResult(SCENARIO, time.time())
        old.kill()
        result.add(
            result.failed_at, f"failure: killed the node of Patroni leader {old.name} (Patroni + PostgreSQL)"
        )
        elected: list[tuple[float, PatroniMember]] = []

        def recovered() -> bool:
            if not elected:
                leader = patroni.leader()
                if leader is not None and leader is not old:
                    elected.append((time.time(), leader))
            return bool(elected) and writer.first_ack_after(result.failed_at) is not None

        result.recovered = wait_until(recovered, deadline)
        time.sleep(1)
    finally:
        writer.stop()
    if elected:
        result.add(elected[0][0], f"patroni: {elected[0][1].name} holds the leader key")
    result.add(
        writer.first_ack_after(result.failed_at), "recovered: writes committed again through the write LB"
    )
    result.keep_series({"postgres": [writer]})
    alive = [m for m in patroni.members if m.running()]
    primaries = [m for m in alive if not m.in_recovery()]
    result.primaries = {"postgres": len(primaries)}
    acked = through_lb.ids(writer)
    if len(primaries) == 1:
        with primaries[0].connect() as conn:
            ids = {row[0] for row in conn.execute("SELECT id FROM drill_writes").fetchall()}
        result.acked, result.lost = len(acked), len(acked - ids)
    # chain_timeline reads only ``.chain`` of the demo stack it is given
    chain_timeline(cast(DemoStack, drill), result, {old.name}, set(ALERTS))
    result.faults = {"promotion": who_promoted(drill, old)}
    return result


def who_promoted(drill: PatroniDrillStack, old: PatroniMember) -> dict[str, Any]:
    """Who made the new primary: the leader Patroni's log says it promoted itself, and what the
    recovery service's audit trail shows (its election record, and any promotion of its own)."""
    leader = drill.patroni.leader()
    log = drill.stack.path("logs", f"{leader.name}.log").read_text(errors="replace") if leader else ""
    trail = [e for e in audit(drill.chain) if e.get("cluster", CLUSTER) == CLUSTER]
    events = [e["event"] for e in trail]
    elected = next((e for e in trail if e["event"] == "patroni_elected"), None)
    return {
        "old_leader": old.name,
        "new_leader": leader.name if leader else None,
        "patroni_promoted_itself": "promoted self to leader" in log,
        "kit_elected": elected.get("target") if elected else None,
        "kit_waited_s": elected.get("waited_s") if elected else None,
        "kit_promoted": "promoted" in events,
        "kit_repointed": "repointed" in events,
    }


def run_patroni_drill(stack: Stack | None = None, timeout: float = 120.0) -> DrillResult:
    """Build the drill's stack, run the drill, stop the stack (unless one is given)."""
    own = stack is None
    stack = stack or Stack()
    try:
        drill = build_patroni_stack(stack)
        wait_until_watched(drill)
        return drill_pg_primary_patroni(drill, time.time() + timeout)
    finally:
        if own:
            stack.close()


PATRONI_DRILLS = {SCENARIO: run_patroni_drill}
