"""A small real stack that gives every dashboard panel data: used by
tests/drills/test_dashboards_live.py and by
dashboards/render_preview.py.

From the machine's binaries, on free loopback ports: four Express app servers in two regions (one of them
stopped on purpose, so an alert fires and the overview shows where), an HAProxy pair behind a VIP, a
Redis master (RDB snapshots and AOF on) + replica + one Sentinel with a list queue, a BullMQ queue and
a stream with a consumer group, a PostgreSQL primary (WAL archived with pgBackRest, a full, a
differential and an incremental backup in its repository, one replication slot, the heartbeat table) +
streaming replica (its base backup's label is the cluster's backup file), node_exporter (its textfile
collector serving the batch commands' results), ``tierwatch serve`` probing every second (reading the
pgBackRest repository every 10 s, writing the PostgreSQL and Redis heartbeats), ``tierwatch recover``
in dry-run mode, and Prometheus scraping both every second with the rules of rules/ (each ``for:`` and
``keep_firing_for:`` shortened to a few seconds, nothing else changed), HAProxy's and the apps' own
metrics too (jobs haproxy and app), and a Knot DNS zone holding the Redis master's name (the exporter
checks it; both configs have its ``service_discovery``). The logs go to one collector (rsyslog: HAProxy
through its syslog, the other servers' output files, the kit's JSON logs and audit trail), which mtail
turns into counters with the programs of logs/mtail/ (job logs: the logs dashboard).
A background thread sends a little traffic through the VIP (GET /work) and to Redis, and two webhook
notifications reach the recovery service (a refused failover, then an alert the allow-list does not
permit the action for, blocked). Once both heartbeats are written (and the primary's is archived), the
product's batch commands run once on the exporter's config, as their timers would:
``tierwatch redis-snapshot`` then ``tierwatch restore-test`` (both backup sets restored and verified), so
that the backups dashboard's restore-test and snapshot panels have data.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tierwatch.recovery.webhook import fingerprint_of
from tierwatch_lab import demo_backups
from tierwatch_lab.demo_dns import srv
from tierwatch_lab.stack import Stack, StackError, free_port, wait_for
from tierwatch_lab.stack.express import start_express
from tierwatch_lab.stack.haproxy import start_haproxy, start_vip
from tierwatch_lab.stack.knot import start_knot
from tierwatch_lab.stack.mtail import logs_job, start_mtail
from tierwatch_lab.stack.node_exporter import node_job, start_node_exporter
from tierwatch_lab.stack.pgbackrest import archive_now, start_backed_up_primary
from tierwatch_lab.stack.postgres import LOG_SETTINGS, PgServer, start_replica
from tierwatch_lab.stack.prometheus import PrometheusServer, ScrapeJob, start_prometheus
from tierwatch_lab.stack.redis import WRITE_FENCING, start_redis, start_sentinels, wait_writes_accepted
from tierwatch_lab.stack.rsyslog import LogCollector, start_collector
from tierwatch_lab.stack.scrape_targets import traffic_jobs
from tierwatch_lab.stack.tls import start_tls_frontend

ROOT = Path(__file__).resolve().parents[1]
FOR_LINE = re.compile(r"^(\s+for:\s*)\S+\s*$", re.MULTILINE)
KEEP_FIRING_LINE = re.compile(r"^(\s+keep_firing_for:\s*)\S+\s*$", re.MULTILINE)
TOKEN = "dashboards-live-token"
APP_REGIONS = {"es-1": "primary", "es-2": "primary", "es-3": "failover", "es-4": "failover"}
STOPPED_APP = "es-4"
BATCH_TIMEOUT = 300.0  # seconds each batch command (redis-snapshot, restore-test) may take
PG_REGIONS = {"pg-1": "primary", "pg-2": "primary"}
REDIS_REGIONS = {"redis-a": "primary", "redis-b": "primary"}


@dataclass
class LiveStack:
    """What the dashboards' queries run against."""

    stack: Stack
    prometheus: PrometheusServer
    exporter_url: str
    recovery_url: str


def fast_rules(directory: Path, for_value: str = "3s") -> list[Path]:
    """Copies of rules/*.yml with every ``for:`` and ``keep_firing_for:`` set to ``for_value``
    (expressions unchanged)."""
    copies = []
    for source in sorted((ROOT / "rules").glob("*.yml")):
        target = directory / source.name
        fast = FOR_LINE.sub(lambda m: m.group(1) + for_value, source.read_text())
        target.write_text(KEEP_FIRING_LINE.sub(lambda m: m.group(1) + for_value, fast))
        copies.append(target)
    return copies


def _collect_logs(stack: Stack) -> LogCollector:
    """The central log collector, with every file this stack's servers will write registered (their
    names fix the paths): the apps', Redis', PostgreSQL's output, the kit's JSON logs and audit trail.
    The LBs log through HAProxy's syslog (``collector.syslog_target``)."""
    collector = start_collector(stack)
    logs = stack.root / "logs"
    with collector.batch():
        for name, region in APP_REGIONS.items():
            collector.watch_file(logs / f"{name}.log", "app", "web", name, region, "app")
        for name, region in REDIS_REGIONS.items():
            collector.watch_file(logs / f"{name}.log", "redis", "cache-main", name, region, "redis")
        for name, region in PG_REGIONS.items():
            collector.watch_file(logs / f"{name}.log", "postgres", "main-db", name, region, "postgres")
        collector.watch_file(logs / "tierwatch.log", "kit", "tierwatch", "exporter", "-", "exporter")
        collector.watch_file(logs / "recover.log", "kit", "tierwatch", "recovery", "-", "recovery")
        audit = stack.root / "recovery-state" / "audit.jsonl"
        collector.watch_file(audit, "kit", "tierwatch", "recovery", "-", "audit")
    return collector


def _serve(stack: Stack, name: str, argv: list[str], env: dict[str, str] | None = None) -> str:
    """Start a ``tierwatch`` subcommand on a free port and wait for /ready; its base URL."""
    port = free_port()
    process = stack.spawn(
        name, [sys.executable, "-m", "tierwatch", *argv, "--listen", f"127.0.0.1:{port}"], env=env
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        process.check_alive()
        return httpx.get(url + "/ready", timeout=2.0).status_code == 200

    wait_for(ready, 30, f"{name} to be ready")
    return url


def _backups_section(backups: demo_backups.DemoBackups) -> dict[str, Any]:
    """The demo's ``backups:`` section (demo_backups.py), the PostgreSQL set verifying what this stack
    has: the heartbeat row and the ``visits`` table (the demo's app role does not exist here)."""
    section = backups.section()
    for entry in section["sets"]:
        if entry["name"] == demo_backups.PG_BACKUP:
            entry["verify"] = [
                {"name": "heartbeat", "query": f"SELECT count(*) FROM {demo_backups.HEARTBEAT_TABLE}",
                 "equals": 1},
                {"name": "visits", "query": "SELECT count(*) FROM visits", "min": 1},
            ]  # fmt: skip
    return section


def _heartbeats_archived(primary: PgServer, redis_client: Any) -> None:
    """Wait for the exporter's first heartbeats (the PostgreSQL row, the Redis key), then switch the
    primary's WAL and wait until that segment is in the pgBackRest repository: a restore then replays
    the heartbeat, which the restore test verifies and measures the RPO from."""

    def written() -> bool:
        rows = primary.sql(f"SELECT count(*) FROM {demo_backups.HEARTBEAT_TABLE}")
        return bool(rows[0][0]) and redis_client.get(demo_backups.HEARTBEAT_KEY) is not None

    wait_for(written, 60, "the exporter's heartbeats")
    archive_now(primary)


def _batch(stack: Stack, command: str, config: Path, env: dict[str, str]) -> None:
    """Run ``tierwatch COMMAND --config CONFIG`` (the product's batch command, as its timer would);
    its output goes to the stack's logs, a failure raises StackError with its tail."""
    log = stack.path("logs", f"{command}.log")
    argv = demo_backups.tierwatch_command(command, "--config", str(config))
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BATCH_TIMEOUT, check=False, env=env, cwd=log.parent
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"tierwatch {command} did not finish within {BATCH_TIMEOUT:g}s") from None
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise StackError(f"tierwatch {command} failed with code {done.returncode}:\n{tail}")


def _traffic(stop: threading.Event, vip_port: int, redis_client: Any) -> None:
    """Requests through the VIP and Redis lookups until ``stop`` is set: a warm cache, one lookup in ten
    a miss (a healthy stack in the pictures, not an alert)."""
    with httpx.Client(timeout=2.0) as client:
        n = 0
        while not stop.wait(0.2):
            n += 1
            try:
                client.get(f"http://127.0.0.1:{vip_port}/work")
                redis_client.get("page:home")
                if n % 5 == 0:
                    redis_client.get("page:missing")
            except Exception:  # noqa: BLE001 - traffic is best effort; the stack may be stopping
                pass


def _refused(recovery_url: str) -> bool:
    """True once the recovery service counted a refused action."""
    text = httpx.get(recovery_url + "/metrics", timeout=5).text
    return bool(
        re.search(r'^tierwatch_recovery_actions_total\{[^}]*outcome="refused"[^}]*\} [1-9]', text, re.M)
    )


def _notify(recovery_url: str, name: str, labels: dict[str, str], starts_at: str) -> None:
    labels = {"alertname": name, "severity": "critical", **labels}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": name},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint_of(
            labels
        ),  # as Alertmanager computes it; a new incident is a new startsAt
    }
    body = {
        "version": "4",
        "groupKey": "{}:{alertname}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "recovery",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [alert],
    }
    response = httpx.post(
        recovery_url + "/webhook", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    response.raise_for_status()


@contextmanager
def live_stack(keep: bool = False) -> Iterator[LiveStack]:
    """Start everything; stop every process on exit."""
    stop = threading.Event()
    with Stack(keep=keep) as stack:
        collector = _collect_logs(stack)
        # mtail before the servers: it reads central.log from its start only while the file is empty
        mtail = start_mtail(stack, [collector.central], ROOT / "logs" / "mtail")
        # an https app server (HAProxy with a self-signed certificate): the TLS certificates panel
        tls_url, tls_ca = start_tls_frontend(stack)
        # the demo's Express app servers (RED metrics, scraped as job app) on a Redis of their own
        app_redis = start_redis(stack, "redis-apps")
        apps = {name: start_express(stack, name, reg, app_redis.url) for name, reg in APP_REGIONS.items()}
        servers = [(n, a.port) for n, a in apps.items()]
        lbs = [
            start_haproxy(
                stack, name, servers, log=collector.syslog_target("lb", "edge", name, "primary", "haproxy")
            )
            for name in ("lb-1", "lb-2")
        ]
        vip = start_vip(stack, lbs)

        # snapshots and AOF on the master: the persistence panels have data
        redis_a = start_redis(
            stack, "redis-a", extra_config=(*WRITE_FENCING, "save 3600 1", "appendonly yes")
        )
        redis_b = start_redis(stack, "redis-b", replica_of=redis_a, extra_config=WRITE_FENCING)
        wait_writes_accepted(redis_a)
        sentinels = start_sentinels(
            stack, redis_a, n=1, quorum=1, master_name="cache-main", down_after_ms=5000
        )
        master = redis_a.client()
        master.set("page:home", "cached")
        master.lpush("jobs", *[f"job-{i}" for i in range(25)])
        for i in range(12):
            master.xadd("events", {"n": i})
        master.xgroup_create("events", "mailer", id="0")

        # WAL archived with pgBackRest, a first full backup; the heartbeat table before the clone
        pg_1, backrest = start_backed_up_primary(
            stack, "pg-1", stanza=demo_backups.STANZA, settings=LOG_SETTINGS
        )
        demo_backups.create_heartbeat_table(pg_1)
        pg_2 = start_replica(stack, pg_1, "pg-2", settings=LOG_SETTINGS)
        pg_1.sql("SELECT pg_create_physical_replication_slot('pg_dr')")
        pg_1.sql("CREATE TABLE visits (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
        pg_1.sql("INSERT INTO visits DEFAULT VALUES")
        pg_1.sql("SELECT pg_switch_wal()")
        for kind in ("diff", "incr"):  # every backup type has its series
            backrest.backup(kind)
        backups = demo_backups.prepare(stack, backrest)
        pg_2.wait_caught_up()

        clusters: list[dict[str, Any]] = [
            {"name": "edge", "tier": "lb", "vip": vip.url, "targets": [
                {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
                for lb in lbs]},
            {"name": "web", "tier": "app", "targets": [
                {"name": n, "region": APP_REGIONS[n], "url": a.url} for n, a in apps.items()]},
            {"name": "cache-main", "tier": "redis",
             "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in (redis_a, redis_b)],
             "sentinel": {"master_name": "cache-main", "targets": [
                 {"name": s.name, "region": "primary", "url": s.url} for s in sentinels]},
             "queues": [{"name": "jobs", "kind": "list"}, {"name": "emails", "kind": "bullmq"},
                        {"name": "events", "kind": "stream"}],
             "backup": {"heartbeat_key": demo_backups.HEARTBEAT_KEY}},
            {"name": "main-db", "tier": "postgres", "password_env": "TIERWATCH_LIVE_PG_PASSWORD",
             # the base backup the replica was cloned from (PostgreSQL renamed its backup_label)
             "backup": {"last_backup_file": str(pg_2.data_dir / "backup_label.old"),
                        # pgBackRest's report (every 10 s) and the heartbeat (demo_backups.py)
                        **backups.exporter_backup()}, "targets": [
                {"name": s.name, "region": "primary", "url": s.dsn_without_password} for s in (pg_1, pg_2)]},
            # last: the recovery service's config takes clusters[1:3] (web, cache-main)
            {"name": "portal", "tier": "app", "targets": [
                {"name": "portal-1", "region": "primary", "url": tls_url, "tls_ca_file": str(tls_ca)}]},
        ]  # fmt: skip
        # the Redis master's name in a Knot zone: the exporter checks it, recovery counts its updates
        knot = start_knot(stack, records=[f"primary.cache-main 2 IN SRV {srv(redis_a.port)}"], ttl=2)
        dns = {
            "server": knot.server,
            "zone": knot.zone,
            "key": {"name": knot.key_name, "secret_file": str(knot.key_file)},
            "ttl": 2,
            "records": [
                {"name": "primary.cache-main", "cluster": "cache-main",
                 "values": {s.name: srv(s.port) for s in (redis_a, redis_b)}},
            ],
        }  # fmt: skip
        config = stack.path("tierwatch.yml")
        config.write_text(
            yaml.safe_dump(
                {
                    "monitor": {"interval": "1s", "timeout": "800ms"},
                    "log": {"format": "json"},  # the lines the logs dashboard counts
                    # every panel shows data, the one on an opt-in series too
                    "metrics": {"http_response_size": True},
                    "clusters": clusters,
                    # what `tierwatch restore-test` and `tierwatch redis-snapshot` do
                    "backups": _backups_section(backups),
                    "service_discovery": dns,
                }
            )
        )
        env = dict(os.environ, TIERWATCH_LIVE_PG_PASSWORD=pg_1.monitor_password)
        exporter_url = _serve(stack, "tierwatch", ["serve", "--config", str(config)], env)

        token = stack.path("secrets", "token")
        token.write_text(TOKEN + "\n")
        recovery = {
            "state_dir": str(stack.directory("recovery-state")),
            "dry_run": True,
            "auth": {"bearer_token_file": str(token)},
            "allow": {"RedisMasterDown": "redis_failover"},
        }
        recovery_config = stack.path("recover.yml")
        recovery_config.write_text(
            yaml.safe_dump(
                {
                    "clusters": clusters[1:3],
                    "recovery": recovery,
                    "service_discovery": dns,
                    "log": {"format": "json"},
                }
            )
        )
        recovery_url = _serve(stack, "recover", ["recover", "--config", str(recovery_config)], env)

        prometheus = start_prometheus(
            stack,
            [
                ScrapeJob("tierwatch", [exporter_url.removeprefix("http://")]),
                ScrapeJob("tierwatch-recovery", [recovery_url.removeprefix("http://")]),
                *traffic_jobs(lbs, apps.values()),  # HAProxy's exporter and the apps' /metrics
                node_job(start_node_exporter(stack, textfile_dir=backups.textfile_dir)),
                logs_job(mtail),
            ],
            fast_rules(stack.directory("rules")),
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        wait_for(prometheus.targets_up, 30, "prometheus to scrape the exporter and the recovery service")

        # the batch commands' results, in the textfile node_exporter serves
        _heartbeats_archived(pg_1, master)
        _batch(stack, "redis-snapshot", config, env)
        _batch(stack, "restore-test", config, env)

        traffic = threading.Thread(target=_traffic, args=(stop, vip.port, master), daemon=True)
        traffic.start()
        try:
            apps[STOPPED_APP].process.stop()  # an app server goes down: AppInstanceDown fires
            # the recovery counters are scraped at 0 first, so increase() sees the decisions that follow
            wait_for(lambda: prometheus.query("tierwatch_recovery_actions_total"), 30, "recovery series")
            # the master still answers: the dry-run failover is refused (a decision, with a duration);
            # then an alert the allow-list does not permit redis_failover for is blocked (not_allowed).
            # (A refused run starts no cooldown, so the same alert again would only be refused again.)
            redis_alert = {
                "tier": "redis",
                "cluster": "cache-main",
                "target": "redis-a",
                "action": "redis_failover",
            }
            _notify(recovery_url, "RedisMasterDown", redis_alert, "2026-01-01T00:00:00Z")
            wait_for(lambda: _refused(recovery_url), 60, "the recovery service to refuse the failover")
            _notify(recovery_url, "RedisNoMaster", redis_alert, "2026-01-01T01:00:00Z")
            yield LiveStack(stack, prometheus, exporter_url, recovery_url)
        finally:
            stop.set()
            traffic.join(5)
