"""Every kind of target exports a known number of series with the default settings, within its budget
(``SERIES_PER_TARGET`` in metrics.py, shown in docs/metrics.md): Prometheus pays for every series, so
a new one per target is a decision, not a side effect. Counted on real servers of every tier, through
the same ready exposition /metrics serves."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metric_catalog import CLUSTER_PROBE_DURATION
from tierwatch.metrics import SERIES_PER_TARGET, ReadyExposition
from tierwatch.monitor import Monitor
from tierwatch.tier_catalog import ROLES_BY_TIER
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.haproxy import start_haproxy, start_vip
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.postgres import start_primary, start_replica
from tierwatch_lab.stack.redis import start_redis, start_sentinels

# kind (as SERIES_PER_TARGET names it) -> the lab target of that kind below
TARGET_OF_KIND = {
    "HTTP app server": "web-1",
    "load balancer (HAProxy)": "lb-1",
    "Redis primary": "redis-a",
    "Redis replica": "redis-b",
    "Redis Sentinel": "sentinel-1",
    "PostgreSQL primary": "pg-1",
    "PostgreSQL replica": "pg-2",
}
VIP_KIND = "VIP of an LB pair (per cluster)"
# kinds this lab has no server for, and the test that counts them on a real one
MEASURED_ELSEWHERE = {"Patroni member (adds to its PostgreSQL target)": "test_patroni_probe.py"}
LATENCY_KIND = "probe latency histogram (per tier, cluster and region)"


def series_by_target(body: str) -> dict[str, int]:
    """Series per value of the ``target`` label; per cluster for the VIP series (``vip:CLUSTER``), per
    cluster and region for the latency histogram (``latency:TIER/CLUSTER/REGION``)."""
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = sample.labels
            if "tier" not in labels or "cluster" not in labels:
                continue
            key = labels.get("target")
            if key is None and family.name == CLUSTER_PROBE_DURATION.name:
                key = f"latency:{labels['tier']}/{labels['cluster']}/{labels['region']}"
            elif key is None:
                key = f"vip:{labels['cluster']}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_every_target_kind_exports_its_declared_series_within_budget(
    stack: Stack, make_config: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    app = start_http_backend(stack, "web-1")
    lbs = [start_haproxy(stack, f"lb-{i}", [(app.name, app.port)]) for i in (1, 2)]
    vip = start_vip(stack, lbs)
    master = start_redis(stack, "redis-a")
    replica = start_redis(stack, "redis-b", replica_of=master)
    sentinel = start_sentinels(stack, master, n=1, quorum=1, master_name="cache")[0]
    primary = start_primary(stack, "pg-1")
    standby = start_replica(stack, primary, "pg-2")
    (tmp_path / "pg").write_text(primary.monitor_password)
    lb_targets = [
        {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
        for lb in lbs
    ]
    loaded = make_config(
        [
            {"name": "edge", "tier": "lb", "vip": vip.url, "targets": lb_targets},
            {"name": "web", "tier": "app", "targets": [{"name": "web-1", "region": "p", "url": app.url}]},
            {
                "name": "cache",
                "tier": "redis",
                "targets": [{"name": s.name, "region": "p", "url": s.url} for s in (master, replica)],
                "sentinel": {
                    "master_name": "cache",
                    "targets": [{"name": "sentinel-1", "region": "p", "url": sentinel.url}],
                },
            },
            {
                "name": "db",
                "tier": "postgres",
                "password_file": str(tmp_path / "pg"),
                "targets": [
                    {"name": "pg-1", "region": "p", "url": primary.dsn_without_password},
                    {"name": "pg-2", "region": "p", "url": standby.dsn_without_password},
                ],
            },
        ]
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)

    async def rounds_until_all_up_with_roles() -> None:
        deadline = time.monotonic() + 30
        try:
            while True:
                await monitor.run_round()
                with_roles = [s for s in monitor.states if s.info.tier in ROLES_BY_TIER]
                ready = all(s.up for s in monitor.states) and all(s.role for s in with_roles)
                lag_seen = any(
                    sample.spec.name == "tierwatch_replication_lag_bytes"
                    for s in monitor.states
                    if s.info.name == "pg-2"
                    for sample in s.samples
                )
                if ready and lag_seen:
                    await monitor.run_round()  # one more: every primary's view of its replicas landed
                    return
                assert time.monotonic() < deadline, [(s.info.name, s.up, s.role) for s in monitor.states]
        finally:
            await monitor.close()

    asyncio.run(rounds_until_all_up_with_roles())
    body = exposition.body(*choose_encoder("")).decode()
    counts = series_by_target(body)
    measured = {kind: counts[name] for kind, name in TARGET_OF_KIND.items()}
    measured[VIP_KIND] = counts["vip:edge"]
    measured[LATENCY_KIND] = counts["latency:app/web/p"]
    declared = {kind.kind: kind for kind in SERIES_PER_TARGET}
    assert set(declared) == set(measured) | set(MEASURED_ELSEWHERE)
    for kind, count in measured.items():
        assert count <= declared[kind].budget, f"{kind}: {count} series, budget {declared[kind].budget}"
    # the declared count is what one quiet run sees; a few families follow the server's own state (a
    # PostgreSQL primary's connections by state, for one), so only the budget is a hard limit
    assert all(spec.series <= spec.budget for spec in declared.values())
