"""The real rules on a real Prometheus, scraping the real exporter that watches real Redis and PostgreSQL.

A Redis master and replica and a PostgreSQL primary and streaming replica run from the machine's
binaries; ``tierwatch serve`` probes them every second; Prometheus scrapes it every second and
evaluates the rules of rules/ every second. The test then breaks things for real and watches the
alerts: a second Redis master (REPLICAOF NO ONE on the replica) must fire RedisSplitBrain, and
REPLICAOF back must clear it; WAL replay paused on the PostgreSQL replica while the primary keeps
writing must fire PostgresReplicationLagHigh, and resuming replay must clear it. A Knot DNS server holds the
Redis master's record (``service_discovery``): while it names the master DnsRecordStale is silent;
changed by hand (knotc) to the replica it fires once the TTL plus the margin (30 s) has passed, and
clears when the record names the master again.

Two maintenance alerts are driven for real too: transaction IDs consumed on the PostgreSQL primary
until PostgresXidWraparoundWarning fires (and a freezing VACUUM clears it for that database), and an
HAProxy TLS frontend whose self-signed certificate expires in one day fires TlsCertificateExpiringSoon.

The rule files are the shipped ones with two changes only: every ``for:`` is rewritten to a few seconds,
so the test does not wait the production minutes, and the XID warning threshold (a setting,
``thresholds.pg_xid_age_warning``) is lowered from a billion to XID_WARNING through rules/generate.py's
``--settings``, since consuming a billion transaction IDs takes hours. Every other expression and
threshold is kept as it is (the 30 s read-replica lag threshold is really crossed). Every wait polls with
a deadline.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from rules_fixtures import poll, rules_with_settings

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.knot import KnotServer, start_knot
from tierwatch_lab.stack.postgres import PgServer, start_primary, start_replica
from tierwatch_lab.stack.prometheus import PrometheusServer, ScrapeJob, start_prometheus
from tierwatch_lab.stack.redis import RedisServer, start_redis, wait_replica_linked
from tierwatch_lab.stack.tls import start_tls_frontend

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
RUNBOOK_URL_BASE = yaml.safe_load((RULES / "src" / "settings.yml").read_text())["runbook_url_base"]
FAST_FOR = "3s"
FOR_LINE = re.compile(r"^(\s+for:\s*)\S+\s*$", re.MULTILINE)
# keep_firing_for would hold an alert for minutes after its condition clears: shortened like `for`.
KEEP_FIRING_LINE = re.compile(r"^(\s+keep_firing_for:\s*)\S+\s*$", re.MULTILINE)

pytestmark = pytest.mark.slow


def fast_rule_copies(directory: Path, for_value: str = FAST_FOR, rules: Path = RULES) -> list[Path]:
    """Copies of ``rules``/*.yml in ``directory`` with every ``for`` and ``keep_firing_for`` set to
    ``for_value`` (nothing else changes); the copies are checked to hold the same rules as the originals."""
    copies = []
    for source in sorted(rules.glob("*.yml")):
        text = source.read_text()
        fast, count = FOR_LINE.subn(lambda m: m.group(1) + for_value, text)
        fast = KEEP_FIRING_LINE.sub(lambda m: m.group(1) + for_value, fast)
        original, rewritten = yaml.safe_load(text), yaml.safe_load(fast)
        for group_a, group_b in zip(original["groups"], rewritten["groups"], strict=True):
            for rule_a, rule_b in zip(group_a["rules"], group_b["rules"], strict=True):
                timing = {"for", "keep_firing_for"}
                assert {k: v for k, v in rule_a.items() if k not in timing} == {
                    k: v for k, v in rule_b.items() if k not in timing
                }
        assert count == sum(1 for g in original["groups"] for r in g["rules"] if "for" in r)
        target = directory / source.name
        target.write_text(fast)
        copies.append(target)
    return copies


@dataclass
class LiveStack:
    redis_master: RedisServer
    redis_replica: RedisServer
    pg_primary: PgServer
    pg_replica: PgServer
    prometheus: PrometheusServer
    exporter_url: str
    knot: KnotServer
    tls_url: str


# far above what the lab's servers start with (about 1,000) and what the other tests here use, far
# below what the test can consume in a few seconds
XID_WARNING = 60_000


def rules_with_low_xid_warning(directory: Path) -> Path:
    """rules/*.yml generated with ``thresholds.pg_xid_age_warning`` = XID_WARNING (all else as shipped)."""
    settings = {"thresholds": {"pg_xid_age_warning": XID_WARNING}}
    return rules_with_settings(directory, settings, {"PostgresXidWraparoundWarning"})


DNS_TTL = 1
MASTER_RECORD = "primary.cache-main"


def srv(server: RedisServer) -> str:
    return f"0 0 {server.port} node.tierwatch.test."


@pytest.fixture(scope="module")
def live() -> Iterator[LiveStack]:
    with Stack() as stack:
        redis_a = start_redis(stack, "redis-a")
        redis_b = start_redis(stack, "redis-b", replica_of=redis_a)
        pg_1 = start_primary(stack, "pg-1")
        pg_2 = start_replica(stack, pg_1, "pg-2")
        knot = start_knot(stack, records=[f"{MASTER_RECORD} {DNS_TTL} IN SRV {srv(redis_a)}"], ttl=DNS_TTL)
        tls_url, tls_ca = start_tls_frontend(stack, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        config = {
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "clusters": [
                {
                    "name": "cache-main",
                    "tier": "redis",
                    "targets": [
                        {"name": s.name, "region": "primary", "url": s.url} for s in (redis_a, redis_b)
                    ],
                },
                {
                    "name": "main-db",
                    "tier": "postgres",
                    "password_env": "TIERWATCH_LIVE_PG_PASSWORD",
                    "targets": [
                        {"name": s.name, "region": "primary", "url": s.dsn_without_password}
                        for s in (pg_1, pg_2)
                    ],
                },
                {
                    "name": "web",
                    "tier": "app",
                    "targets": [
                        {"name": "app-tls", "region": "primary", "url": tls_url, "tls_ca_file": str(tls_ca)}
                    ],
                },
            ],
            "service_discovery": {
                "server": knot.server,
                "zone": knot.zone,
                "key": {"name": knot.key_name, "secret_file": str(knot.key_file)},
                "ttl": DNS_TTL,
                "records": [
                    {
                        "name": MASTER_RECORD,
                        "cluster": "cache-main",
                        "values": {s.name: srv(s) for s in (redis_a, redis_b)},
                    }
                ],
            },
        }
        config_path = stack.path("tierwatch.yml")
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        env = dict(os.environ, TIERWATCH_LIVE_PG_PASSWORD=pg_1.monitor_password)
        exporter = stack.spawn(
            "tierwatch",
            [sys.executable, "-m", "tierwatch", "serve", "--config", str(config_path),
             "--listen", f"127.0.0.1:{port}"],
            env=env,
        )  # fmt: skip
        exporter_url = f"http://127.0.0.1:{port}"

        def exporter_ready() -> bool:
            exporter.check_alive()
            return httpx.get(exporter_url + "/ready", timeout=2.0).status_code == 200

        wait_for(exporter_ready, 30, "the exporter to be ready")
        rules = rules_with_low_xid_warning(stack.directory("generated"))
        rule_files = fast_rule_copies(stack.directory("rules"), rules=rules)
        prometheus = start_prometheus(
            stack,
            [ScrapeJob("tierwatch", [f"127.0.0.1:{port}"])],
            rule_files,
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        wait_for(prometheus.targets_up, 30, "prometheus to scrape the exporter")
        yield LiveStack(redis_a, redis_b, pg_1, pg_2, prometheus, exporter_url, knot, tls_url)


def test_rules_load_and_evaluate_cleanly(live: LiveStack) -> None:
    prom = live.prometheus
    # the recording rules produce the cluster-level series the alerts are built on
    poll(
        lambda: prom.value('cluster:tierwatch_live_primaries:count{tier="redis", cluster="cache-main"}') == 1,
        30,
        "one live Redis master",
    )
    poll(
        lambda: prom.value('cluster:tierwatch_live_primaries:count{tier="postgres", cluster="main-db"}') == 1,
        30,
        "one live PostgreSQL primary",
    )
    # another rule group, evaluated on its own schedule: wait for it as for the two above
    poll(
        lambda: prom.value('cluster:tierwatch_replicas_healthy:count{cluster="cache-main"}') == 1,
        30,
        "one healthy Redis replica",
    )
    assert prom.rule_health() == []
    assert prom.alert_state("Watchdog") == "firing"
    for name in ("RedisSplitBrain", "PostgresSplitBrain", "PostgresReplicationLagHigh", "RedisMasterDown"):
        assert prom.alert_state(name) == "inactive", name


def test_redis_second_master_fires_split_brain_until_repaired(live: LiveStack) -> None:
    prom = live.prometheus
    replica = live.redis_replica.client()
    master = live.redis_master
    assert prom.alert_state("RedisSplitBrain", cluster="cache-main") == "inactive"
    replica.execute_command("REPLICAOF", "NO", "ONE")
    try:
        poll(
            lambda: prom.alert_state("RedisSplitBrain", cluster="cache-main", tier="redis") == "firing",
            60,
            "RedisSplitBrain to fire",
        )
        (alert,) = prom.alerts("RedisSplitBrain")
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["action"] == "redis_rejoin"  # the returning old master is demoted
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_URL_BASE}RedisSplitBrain.md"
        assert "2 live masters" in alert["annotations"]["description"]
        assert prom.alert_state("PostgresSplitBrain") == "inactive"
    finally:
        replica.execute_command("REPLICAOF", master.host, str(master.port))
    wait_replica_linked(live.redis_replica, 30)
    poll(lambda: prom.alert_state("RedisSplitBrain") == "inactive", 60, "RedisSplitBrain to clear")


def test_paused_postgres_replay_under_writes_fires_lag_until_resumed(live: LiveStack) -> None:
    prom = live.prometheus
    primary, replica = live.pg_primary, live.pg_replica
    alert = "PostgresReplicationLagHigh"
    assert prom.alert_state(alert, cluster="main-db") == "inactive"
    primary.sql(
        "CREATE TABLE IF NOT EXISTS live_writes (id serial PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    primary.sql("INSERT INTO live_writes DEFAULT VALUES")
    # the replica has replayed a transaction, as a production replica has: the lag in seconds is
    # measured from the last replayed commit (none replayed yet: the probe cannot tell the age)
    replica.wait_caught_up()
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with primary.connect() as conn:
                while not stop.is_set():
                    conn.execute("INSERT INTO live_writes DEFAULT VALUES")
                    stop.wait(0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    writer = threading.Thread(target=write, name="pg-writer", daemon=True)
    writer.start()
    replica.sql("SELECT pg_wal_replay_pause()")
    try:
        poll(
            lambda: prom.alert_state(alert, cluster="main-db", target="pg-2") == "firing",
            120,
            f"{alert} to fire for pg-2",
        )
        (firing,) = prom.alerts(alert)
        labels = firing["labels"]
        assert {k: labels[k] for k in ("tier", "cluster", "target", "region", "severity")} == {
            "tier": "postgres",
            "cluster": "main-db",
            "target": "pg-2",
            "region": "primary",
            "severity": "warning",
        }
        assert float(firing["value"]) > 30
        assert prom.alert_state("PostgresDRReplicationLagHigh") == "inactive"
        assert prom.value('tierwatch_pg_replay_paused{target="pg-2"}') == 1
    finally:
        replica.sql("SELECT pg_wal_replay_resume()")
        stop.set()
        writer.join(10)
    assert not errors, errors
    poll(lambda: prom.alert_state(alert) == "inactive", 60, f"{alert} to clear after replay resumed")
    assert prom.value('tierwatch_pg_replay_paused{target="pg-2"}') == 0


def test_a_record_changed_by_hand_fires_dns_record_stale_until_it_names_the_master_again(
    live: LiveStack,
) -> None:
    prom = live.prometheus
    labels = {"cluster": "cache-main", "record": f"{MASTER_RECORD}.tierwatch.test", "type": "SRV"}
    poll(
        lambda: prom.value('tierwatch_dns_record_matches{cluster="cache-main"}') == 1,
        30,
        "the record checked",
    )
    assert prom.alert_state("DnsRecordStale") == "inactive"
    live.knot.set_rrset(MASTER_RECORD, "SRV", [srv(live.redis_replica)])  # an operator's mistake
    changed = time.monotonic()
    try:
        poll(
            lambda: prom.value('tierwatch_dns_record_matches{cluster="cache-main"}') == 0, 30, "the mismatch"
        )
        # silent for the TTL plus the 30 s margin (the expression's own, not shortened here)
        poll(lambda: prom.alert_state("DnsRecordStale", **labels) == "firing", 90, "DnsRecordStale to fire")
        assert time.monotonic() - changed > DNS_TTL + 30
        (alert,) = prom.alerts("DnsRecordStale")
        assert alert["labels"]["severity"] == "critical" and alert["labels"]["tier"] == "redis"
        assert alert["annotations"]["runbook_url"] == f"{RUNBOOK_URL_BASE}DnsRecordStale.md"
        assert prom.alert_state("DnsRecordUnanswered") == "inactive"
    finally:
        live.knot.set_rrset(MASTER_RECORD, "SRV", [srv(live.redis_master)])
    poll(lambda: prom.alert_state("DnsRecordStale") == "inactive", 60, "DnsRecordStale to clear")


def test_consumed_transaction_ids_fire_xid_wraparound_warning_until_frozen(live: LiveStack) -> None:
    prom, primary = live.prometheus, live.pg_primary
    alert = "PostgresXidWraparoundWarning"
    ages = 'tierwatch_pg_database_xid_age{cluster="main-db", database="postgres"}'
    start = poll(lambda: prom.value(ages), 30, "the primary's XID age in Prometheus")
    assert start < XID_WARNING
    assert prom.alert_state(alert, cluster="main-db") == "inactive"
    count = int(XID_WARNING - start + 2000)
    with primary.connect() as conn:  # autocommit: every COMMIT in the loop ends one transaction
        conn.execute(f"DO $$ BEGIN FOR i IN 1..{count} LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$")
    poll(lambda: prom.alert_state(alert, database="postgres") == "firing", 60, f"{alert} to fire")
    firing = {a["labels"]["database"]: a for a in prom.alerts(alert) if a["state"] == "firing"}
    # transaction IDs are server-wide: every database aged, template0 too
    assert {"postgres", "template0", "template1"} <= set(firing)
    labels = firing["postgres"]["labels"]
    assert (labels["severity"], labels["cluster"], labels["target"]) == ("warning", "main-db", "pg-1")
    assert firing["postgres"]["annotations"]["runbook_url"] == f"{RUNBOOK_URL_BASE}{alert}.md"
    assert prom.alert_state("PostgresXidWraparoundCritical") == "inactive"
    primary.sql("VACUUM (FREEZE)")  # freezes the database it runs in: only "postgres" is young again
    poll(
        lambda: prom.alert_state(alert, database="postgres") == "inactive",
        60,
        f"{alert} to clear for postgres",
    )
    assert prom.alert_state(alert, database="template0") == "firing"


def test_a_certificate_that_expires_in_a_day_fires_tls_certificate_expiring_soon(live: LiveStack) -> None:
    prom = live.prometheus
    alert = "TlsCertificateExpiringSoon"
    poll(lambda: prom.alert_state(alert, cluster="web") == "firing", 60, f"{alert} to fire")
    (firing,) = prom.alerts(alert)
    assert firing["labels"]["target"] == "app-tls" and firing["labels"]["severity"] == "warning"
    left = float(firing["value"])
    assert 86400 - 600 < left <= 86400, left  # the certificate was made a day before
    assert prom.alert_state("TlsCertificateExpired") == "inactive"
    assert prom.value('tierwatch_up{target="app-tls"}') == 1  # verified against its CA: not down
