"""The exporter reads a real Patroni cluster (3 members over the lab's etcd, Debian's PostgreSQL): the
monitor's /metrics shows Patroni's leader and replicas, their timeline and streaming beside the
PostgreSQL probe's own view, the cluster paused through Patroni's REST API, and after the leader is
killed the new leader on a higher timeline; no Patroni connection is left open between rounds."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from patroni_fixtures import patroni_cluster, patroni_cluster_config
from prometheus_client.exposition import choose_encoder

from tierwatch.clients.patroni import read_cluster, read_status
from tierwatch.config import LoadedConfig, PatroniMember
from tierwatch.events import EventLog
from tierwatch.metrics import SERIES_PER_TARGET, ReadyExposition
from tierwatch.monitor import Monitor
from tierwatch.probes.patroni import SERIES_PER_MEMBER
from tierwatch_lab.stack.patroni import PatroniCluster

from helpers import connections_to
from helpers import metric_value as value

__all__ = ["patroni_cluster"]
ROOT = Path(__file__).resolve().parents[2]


def dashboard_patroni_metrics() -> set[str]:
    """The tierwatch_patroni_* series the generated dashboards query."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    generate = importlib.import_module("dashboards.generate")
    text = json.dumps([generate.build_dashboard(spec) for spec in generate.DASHBOARDS])
    found = set(re.findall(r"tierwatch_patroni_\w+", text))
    assert found, "no dashboard reads a Patroni series"
    return found


def scrape(exposition: ReadyExposition) -> str:
    return exposition.body(*choose_encoder("")).decode()


async def rounds_until(
    monitor: Monitor, exposition: ReadyExposition, condition: Callable[[str], bool], timeout: float, what: str
) -> str:
    """Run monitor rounds until ``condition`` holds for the exposition text; returns that text."""
    deadline = time.monotonic() + timeout
    while True:
        await monitor.run_round()
        text = scrape(exposition)
        if condition(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.5)


def patroni_series(text: str, target: str) -> int:
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("tierwatch_patroni_") and f'target="{target}"' in line
    )


def set_pause(cluster: PatroniCluster, paused: bool) -> None:
    leader = cluster.wait_leader(30)
    answer = httpx.patch(f"{leader.rest_url}/config", json={"pause": paused}, timeout=10)
    assert answer.status_code == 200, answer.text


def test_exporter_reads_a_patroni_cluster(
    patroni_cluster: PatroniCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    cluster = patroni_cluster
    leader = cluster.wait_leader(60)
    cluster.wait_streaming(timeout=60)
    names = [m.name for m in cluster.members]
    replicas = [n for n in names if n != leader.name]
    loaded = make_config([patroni_cluster_config(cluster)], interval="5s", timeout="2s")
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)
    rest_ports = {m.rest_port for m in cluster.members}
    [budget] = [b for b in SERIES_PER_TARGET if b.kind.startswith("Patroni member")]

    def role(text: str, target: str, which: str) -> float | None:
        return value(text, "tierwatch_patroni_role", target=target, role=which)

    def settled(text: str) -> bool:
        return all(value(text, "tierwatch_patroni_up", target=n) == 1 for n in names) and all(
            value(text, "tierwatch_patroni_streaming", target=n) == 1 for n in replicas
        )

    async def scenario() -> None:
        try:
            text = await rounds_until(
                monitor, exposition, settled, 60, "every member read, replicas streaming"
            )
            # Patroni's roles agree with the PostgreSQL probe's own
            assert role(text, leader.name, "primary") == 1
            assert value(text, "tierwatch_role", target=leader.name, role="primary") == 1
            for name in replicas:
                assert role(text, name, "replica") == 1 and role(text, name, "primary") == 0
                assert value(text, "tierwatch_role", target=name, role="replica") == 1
            for name in names:
                assert value(text, "tierwatch_patroni_state", target=name, state="running") == 1
                assert value(text, "tierwatch_patroni_timeline", target=name) == value(
                    text, "tierwatch_pg_timeline", target=name
                )
                assert value(text, "tierwatch_patroni_paused", target=name) == 0
                assert value(text, "tierwatch_patroni_cluster_unlocked", target=name) == 0
                assert value(text, "tierwatch_patroni_failover_disabled", target=name) == 0
                assert value(text, "tierwatch_patroni_wal_position_bytes", target=name) > 0
                seen = value(text, "tierwatch_patroni_dcs_last_seen_timestamp_seconds", target=name)
                assert seen is not None and abs(seen - time.time()) < 60
                assert patroni_series(text, name) == SERIES_PER_MEMBER == budget.series <= budget.budget
            # the PostgreSQL dashboard's Patroni panels read series this real cluster produces (the
            # dashboards' live test has no Patroni)
            for metric in dashboard_patroni_metrics():
                assert f"\n{metric}{{" in text, metric
            first_timeline = value(text, "tierwatch_patroni_timeline", target=leader.name)

            # Patroni's REST API speaks HTTP/1.0 (BaseHTTPRequestHandler's default) and closes every
            # connection after its answer: a read costs one connection, and none is left open
            for _ in range(5):
                await monitor.run_round()
            assert connections_to(rest_ports) == 0

            # the cluster view from any member (what the recovery service reads)
            member = PatroniMember(target=replicas[0], url=cluster.member(replicas[0]).rest_url)
            view = await read_cluster(member, 5.0, 64 * 1024)
            assert view.leader == leader.name and not view.paused and view.scope == cluster.scope
            assert sorted(m.name for m in view.members) == sorted(names)
            status = await read_status(member, 5.0, 64 * 1024)
            assert status.name == replicas[0] and status.role == "replica"
            assert status.replication_state == "streaming"

            # maintenance mode through Patroni's REST API
            set_pause(cluster, True)
            try:
                await rounds_until(
                    monitor,
                    exposition,
                    lambda t: all(value(t, "tierwatch_patroni_paused", target=n) == 1 for n in names),
                    60,
                    "paused on every member",
                )
            finally:
                set_pause(cluster, False)
            await rounds_until(
                monitor,
                exposition,
                lambda t: all(value(t, "tierwatch_patroni_paused", target=n) == 0 for n in names),
                60,
                "resumed",
            )

            # the leader dies: Patroni elects another one, on a new timeline
            leader.kill()

            def new_leader(text: str) -> bool:
                return any(
                    role(text, n, "primary") == 1
                    and value(text, "tierwatch_patroni_cluster_unlocked", target=n) == 0
                    and (value(text, "tierwatch_patroni_timeline", target=n) or 0) > first_timeline
                    for n in replicas
                )

            text = await rounds_until(monitor, exposition, new_leader, 120, "a new leader on a new timeline")
            elected = next(n for n in replicas if role(text, n, "primary") == 1)
            assert value(text, "tierwatch_role", target=elected, role="primary") == 1
            assert value(text, "tierwatch_up", target=leader.name) == 0
            assert patroni_series(text, leader.name) == 0  # a down target's series go with it
        finally:
            await monitor.close()

    asyncio.run(scenario())
