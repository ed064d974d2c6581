"""Vantage points on a real Prometheus: two exporters (``vantage`` p and f, a target label set in
the scrape config) watch the same real Redis and PostgreSQL servers and Prometheus evaluates the
real rules (``for`` shortened). Exporter f reaches each primary through a gate that the test cuts:
one watcher cut off from the primaries alone fires no RedisMasterDown/PostgresPrimaryDown; killing
the primaries for real then fires both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.postgres import PgServer, start_primary, start_replica
from tierwatch_lab.stack.prometheus import PrometheusServer, ScrapeJob, rules_with_for, start_prometheus
from tierwatch_lab.stack.redis import RedisServer, start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from partition_fixtures import Gate

pytestmark = pytest.mark.slow
RULES = Path(__file__).resolve().parents[2] / "rules"
ALERTS = ("RedisMasterDown", "PostgresPrimaryDown")


@dataclass
class Watched:
    redis: list[RedisServer]
    pg: list[PgServer]
    gates: list[Gate]
    prometheus: PrometheusServer


def _config(redis: list[RedisServer], pg: list[PgServer], secret: str, ports: dict[str, int]) -> dict:
    """The exporter config; ``ports`` overrides a target's port (the gate it is reached through)."""

    def redis_url(s: RedisServer) -> str:
        return f"redis://127.0.0.1:{ports.get(s.name, s.port)}"

    def pg_url(s: PgServer) -> str:
        return s.dsn_without_password.replace(f":{s.port}/", f":{ports.get(s.name, s.port)}/")

    return {
        "monitor": {"interval": "500ms", "timeout": "300ms"},
        "clusters": [
            {
                "name": "cache",
                "tier": "redis",
                "targets": [{"name": s.name, "region": "primary", "url": redis_url(s)} for s in redis],
            },
            {
                "name": "db",
                "tier": "postgres",
                "password_file": secret,
                "targets": [{"name": s.name, "region": "primary", "url": pg_url(s)} for s in pg],
            },
        ],
    }


@pytest.fixture(scope="module")
def watched() -> Iterator[Watched]:
    with Stack() as stack:
        master = start_redis(stack, "redis-1", extra_config=["repl-ping-replica-period 1"])
        redis = [master, start_redis(stack, "redis-2", replica_of=master)]
        primary = start_primary(stack, "pg-1", settings={"wal_sender_timeout": "2s"})
        pg = [primary, start_replica(stack, primary, "pg-2")]
        secret = stack.path("pg.pass")
        secret.write_text(primary.monitor_password + "\n")
        secret.chmod(0o600)
        gates = [Gate(master.port), Gate(primary.port)]
        scrape = []
        for vantage, ports in (("p", {}), ("f", {"redis-1": gates[0].port, "pg-1": gates[1].port})):
            path = stack.path(f"tierwatch-{vantage}.yml")
            path.write_text(yaml.safe_dump(_config(redis, pg, str(secret), ports)))
            exporter = start_exporter(stack, path, name=f"exporter-{vantage}")
            scrape.append({"targets": [exporter.address], "labels": {"vantage": vantage}})
        job = ScrapeJob("tierwatch", [], options={"static_configs": scrape})
        rules = rules_with_for(sorted(RULES.glob("*.yml")), stack.directory("rules"), {"*": "2s"})
        prometheus = start_prometheus(stack, [job], rules)
        wait_for(prometheus.targets_up, 30, "prometheus to scrape both exporters")
        try:
            yield Watched(redis, pg, gates, prometheus)
        finally:
            for gate in gates:
                gate.close()


def _states(prom: PrometheusServer) -> dict[str, str]:
    return {name: prom.alert_state(name) for name in ALERTS}


def test_one_watcher_cut_off_from_the_primaries_alerts_nothing_then_a_real_death_does(
    watched: Watched,
) -> None:
    prom = watched.prometheus
    wait_for(
        lambda: prom.value('count(tierwatch_up{target=~"redis-1|pg-1"} == 1)') == 4,
        30,
        "both vantage points to see both primaries up",
    )
    for gate in watched.gates:
        gate.cut_all()
    wait_for(
        lambda: prom.value('count(tierwatch_up{target=~"redis-1|pg-1", vantage="f"} == 0)') == 2,
        30,
        "vantage f to see both primaries down",
    )
    # 8 s: four times the shortened `for`, plus scrape and evaluation cadences
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert _states(prom) == dict.fromkeys(ALERTS, "inactive")
        time.sleep(0.5)
    assert prom.value('count(tierwatch_up{target=~"redis-1|pg-1", vantage="p"} == 1)') == 2

    watched.redis[0].process.kill()
    watched.pg[0].process.kill()
    wait_for(lambda: _states(prom) == dict.fromkeys(ALERTS, "firing"), 60, "both primary-down alerts")
    (alert,) = prom.alerts("RedisMasterDown")
    assert alert["labels"]["target"] == "redis-1" and "vantage" not in alert["labels"]
