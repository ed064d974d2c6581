"""Logs into alerts, end to end against the real daemons: the stack's components log into the lab's
collector (rsyslogd), mtail turns central.log into counters with the kit's programs (logs/mtail/), and a
real Prometheus scrapes it as job ``logs`` and evaluates rules/logs.rules.yml.

The components log as in the demo: HAProxy through its native syslog (``option httplog``), PostgreSQL's
and Redis' own output and the Express app's JSON lines read as files. Six incidents, each checked in
central.log, as the right mtail counter, and as its alert firing in Prometheus:

- wrong passwords against PostgreSQL (with a U+FFFD in the user name, which would stop mtail for good if
  the collector let it through) -> PostgresAuthFailuresBurst;
- deadlocks forced between two sessions -> PostgresDeadlocks: the deadlock alert is the exporter's (job
  ``tierwatch``, PostgreSQL's own count), which the log's counter must agree with;
- serializable transactions that conflict (write skew) -> PostgresSerializationFailuresHigh, which only
  the log can see;
- an HAProxy backend whose health check passes but which resets every request -> LBServerSideTerminationsHigh;
- an app route that throws -> AppUncaughtErrors;
- Redis failing a BGSAVE (its directory gone, snapshots configured), so it refuses the app's writes with
  MISCONF -> RedisMisconfOrOomSeen.

The rules (logs.rules.yml, and postgres.rules.yml for PostgresDeadlocks) are the shipped templates
rendered by rules/generate.py with the ``for`` of these alerts shortened to a few seconds and the two
per-second thresholds lowered (a rate over 5 minutes of a few seconds' events is far below one a
second); the other thresholds are as shipped (the LB's 5 % share of server-side terminations, more than
10 failed logins). Every wait polls with a deadline. The collector and mtail start before the
components, so every component's first lines are counted and the zero series the alerts need exist.
"""

from __future__ import annotations

import shutil
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from rules_fixtures import poll, rules_with_settings

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.express import ExpressApp, start_express
from tierwatch_lab.stack.haproxy import HAProxy, start_haproxy
from tierwatch_lab.stack.mtail import MtailServer, logs_job, start_mtail
from tierwatch_lab.stack.postgres import LOG_SETTINGS, PgServer, start_primary
from tierwatch_lab.stack.prometheus import PrometheusServer, ScrapeJob, start_prometheus
from tierwatch_lab.stack.redis import RedisServer, start_redis
from tierwatch_lab.stack.rsyslog import CentralLine, LogCollector, start_collector
from tierwatch_lab.stack.tierwatch import start_exporter

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
FAST_FOR = "2s"
FAST = ("PostgresAuthFailuresBurst", "PostgresDeadlocks", "PostgresSerializationFailuresHigh")
SETTINGS = {
    "for": {name: FAST_FOR for name in (*FAST, "LBServerSideTerminationsHigh")},
    # rate(...[5m]) divides by the 5 minutes whatever the series' age: a few events in seconds are a
    # rate of hundredths of a second, where the shipped thresholds want one a second for minutes
    "thresholds": {"pg_log_serialization_failures_per_second": 0.001, "lb_log_min_requests_per_second": 0.05},
}

pytestmark = pytest.mark.slow


class ResettingBackend(socketserver.ThreadingTCPServer):
    """An HTTP server on 127.0.0.1 whose ``GET /health`` answers 200 (HAProxy's check passes) and which
    resets every other request's connection (SO_LINGER 0, then close: a TCP RST)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ResetHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


class _ResetHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(2)
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        if head.startswith(b"GET /health "):
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@dataclass
class LiveLogs:
    collector: LogCollector
    mtail: MtailServer
    prometheus: PrometheusServer
    pg: PgServer
    redis: RedisServer
    app: ExpressApp
    lb: HAProxy


RULE_FILES = ("logs.rules.yml", "postgres.rules.yml")


def fast_rules(directory: Path) -> list[Path]:
    """RULE_FILES rendered with SETTINGS; checked to differ from the shipped files only in the alerts
    whose ``for`` or threshold SETTINGS changes."""
    out = rules_with_settings(directory, SETTINGS, set(SETTINGS["for"]))
    return [out / name for name in RULE_FILES]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveLogs]:
    with Stack() as stack:
        resetting = ResettingBackend()
        stack.on_close(resetting.stop)
        # first the collector, mtail and Prometheus: the components' first lines create the zero series
        logs = stack.root / "logs"
        collector = start_collector(stack)
        with collector.batch():
            collector.watch_file(logs / "pg-1.log", "postgres", "main-db", "pg-1", "primary", "postgres")
            collector.watch_file(logs / "redis-a.log", "redis", "cache-main", "redis-a", "primary", "redis")
            collector.watch_file(logs / "es-1.log", "app", "web", "es-1", "primary", "app")
        mtail = start_mtail(stack, [collector.central], ROOT / "logs" / "mtail")

        pg = start_primary(stack, "pg-1", settings=LOG_SETTINGS)
        for table in ("pairs", "ledger"):
            pg.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
            pg.sql(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
        exporter = start_exporter(stack, exporter_config(stack, pg))
        jobs = [logs_job(mtail), ScrapeJob("tierwatch", [exporter.address])]
        prometheus = start_prometheus(stack, jobs, fast_rules(stack.directory("generated")))
        wait_for(prometheus.targets_up, 30, "Prometheus to scrape mtail and the exporter")
        # snapshots on: a failed BGSAVE then makes Redis refuse writes (stop-writes-on-bgsave-error)
        redis = start_redis(stack, "redis-a", extra_config=["save 3600 1"])
        app = start_express(stack, "es-1", "primary", redis.url)
        lb_log = collector.syslog_target("lb", "edge", "lb-1", "primary", "haproxy")
        lb = start_haproxy(stack, "lb-1", [("rst-1", resetting.port)], check_interval_ms=500, log=lb_log)
        yield LiveLogs(collector, mtail, prometheus, pg, redis, app, lb)


def exporter_config(stack: Stack, pg: PgServer) -> Path:
    """The exporter watching pg-1 every second (PostgresDeadlocks reads its count of deadlocks)."""
    secret = stack.path("secrets", "pg")
    secret.write_text(pg.monitor_password + "\n")
    secret.chmod(0o600)
    config = {
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "clusters": [
            {"name": "main-db", "tier": "postgres", "password_file": str(secret),
             "targets": [{"name": "pg-1", "region": "primary", "url": pg.dsn_without_password}]},
        ],
    }  # fmt: skip
    path = stack.path("tierwatch.yml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def selector(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in {"job": "logs", **labels}.items()) + "}"


def scraped(prom: PrometheusServer, metric: str, **labels: str) -> float | None:
    """The value Prometheus holds for the mtail series (summed over the labels not given)."""
    result = prom.query(f"sum({selector(metric, labels)})")
    return float(result[0]["value"][1]) if result else None


def wait_zero_series(prom: PrometheusServer, metric: str, **labels: str) -> None:
    """Wait until Prometheus has scraped the series (at 0 or more) twice: increase() then sees an event."""
    poll(lambda: scraped(prom, metric, **labels) is not None, 30, f"{metric}{labels} to be scraped")
    time.sleep(2.5)


def wait_firing(prom: PrometheusServer, alert: str, **labels: str) -> dict[str, Any]:
    poll(lambda: prom.alert_state(alert, **labels) == "firing", 60, f"{alert} {labels} to fire")
    (firing,) = [a for a in prom.alerts(alert, **labels) if a["state"] == "firing"]
    return firing


def central(live: LiveLogs, target: str, has: str) -> CentralLine:
    return live.collector.wait_for_line(
        lambda line: line.target == target and has in line.message, 20, f"{target}: {has!r}"
    )


def test_wrong_passwords_fire_the_auth_burst_alert(live: LiveLogs) -> None:
    prom, labels = live.prometheus, {"tier": "postgres", "cluster": "main-db", "target": "pg-1"}
    errors = "tierwatch_log_postgres_errors_total"
    wait_zero_series(prom, errors, **labels, **{"class": "auth"})
    lines_before = live.mtail.value("tierwatch_log_lines_total", target="pg-1") or 0
    user = "guess\ufffdcaf\u00e9"  # U+FFFD: mtail would stop reading central.log for good at it
    for _ in range(12):  # the shipped threshold: more than 10 in 5 minutes
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                host="127.0.0.1", port=live.pg.port, user=user, password="wrong", dbname="postgres",
                connect_timeout=5,
            )  # fmt: skip
    line = central(live, "pg-1", "28P01 FATAL:  password authentication failed")
    assert (line.tier, line.cluster, line.region, line.source) == (
        "postgres",
        "main-db",
        "primary",
        "postgres",
    )
    assert 'for user "guess?café"' in line.message  # the U+FFFD replaced, the é kept
    poll(
        lambda: live.mtail.value(errors, target="pg-1", **{"class": "auth"}) == 12,
        20,
        "12 auth errors counted",
    )
    # mtail reads on after that line: the server's next lines are counted too
    live.pg.sql("CHECKPOINT")
    poll(
        lambda: (live.mtail.value("tierwatch_log_lines_total", target="pg-1") or 0) >= lines_before + 13,
        20,
        "the lines after the login failures counted",
    )
    alert = wait_firing(prom, "PostgresAuthFailuresBurst", **labels)
    assert float(alert["value"]) > 10 and alert["labels"]["region"] == "primary"


def deadlock(pg: PgServer) -> str:
    """Two sessions lock the two rows in opposite orders; returns the loser's error message."""
    barrier = threading.Barrier(2, timeout=10)
    errors: list[str] = []

    def session(first: int, second: int) -> None:
        with pg.connect() as conn:
            conn.execute("BEGIN")
            conn.execute("UPDATE pairs SET v = v + 1 WHERE id = %s", (first,))
            barrier.wait()
            try:
                conn.execute("UPDATE pairs SET v = v + 1 WHERE id = %s", (second,))
                conn.execute("COMMIT")
            except psycopg.errors.DeadlockDetected as exc:
                errors.append(str(exc))
                conn.execute("ROLLBACK")

    threads = [threading.Thread(target=session, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors
    return errors[0]


def test_deadlocks_fire_their_alert(live: LiveLogs) -> None:
    prom, labels = live.prometheus, {"tier": "postgres", "cluster": "main-db", "target": "pg-1"}
    errors = "tierwatch_log_postgres_errors_total"
    wait_zero_series(prom, errors, **labels, **{"class": "deadlock"})
    wait_zero_series(prom, "tierwatch_pg_deadlocks_total", job="tierwatch", **labels)
    for _ in range(3):
        assert "deadlock detected" in deadlock(live.pg)
    line = central(live, "pg-1", "40P01 ERROR:  deadlock detected")
    assert "#01240P01 DETAIL:  Process " in line.message  # the report's DETAIL joined, not a line of its own
    poll(
        lambda: live.mtail.value(errors, target="pg-1", **{"class": "deadlock"}) == 3,
        20,
        "3 deadlocks counted",
    )
    wait_firing(prom, "PostgresDeadlocks", **labels)
    # the log's count and PostgreSQL's own (pg_stat_database, through the exporter) agree
    poll(
        lambda: scraped(prom, "tierwatch_pg_deadlocks_total", job="tierwatch", **labels) == 3, 20, "3 in both"
    )


def write_skew(pg: PgServer) -> str:
    """Two serializable transactions each read both rows and write one: the second to commit fails
    (SQLSTATE 40001); returns its error message."""
    with pg.connect() as first, pg.connect() as second:
        for conn in (first, second):
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            conn.execute("SELECT sum(v) FROM ledger").fetchall()
        first.execute("UPDATE ledger SET v = v + 1 WHERE id = 1")
        second.execute("UPDATE ledger SET v = v + 1 WHERE id = 2")
        first.execute("COMMIT")
        with pytest.raises(psycopg.errors.SerializationFailure) as failure:
            second.execute("COMMIT")
    return str(failure.value)


def test_serialization_failures_fire_their_alert(live: LiveLogs) -> None:
    prom, labels = live.prometheus, {"tier": "postgres", "cluster": "main-db", "target": "pg-1"}
    errors = "tierwatch_log_postgres_errors_total"
    wait_zero_series(prom, errors, **labels, **{"class": "serialization"})
    for _ in range(3):
        assert "could not serialize access" in write_skew(live.pg)
    line = central(live, "pg-1", "40001 ERROR:  could not serialize access")
    assert line.source == "postgres"
    poll(
        lambda: live.mtail.value(errors, target="pg-1", **{"class": "serialization"}) == 3,
        20,
        "3 serialization failures counted",
    )
    alert = wait_firing(prom, "PostgresSerializationFailuresHigh", **labels)
    assert alert["labels"]["severity"] == "warning"


def test_a_backend_resetting_requests_fires_the_server_terminations_alert(live: LiveLogs) -> None:
    prom = live.prometheus
    requests = "tierwatch_log_haproxy_requests_total"
    statuses = []
    for _ in range(40):  # 10 requests a second for 4 s, each a client of its own
        statuses.append(httpx.get(f"http://127.0.0.1:{live.lb.port}/work", timeout=5).status_code)
        time.sleep(0.1)
    assert set(statuses) == {502}
    # ... while HAProxy's health check of the server passes
    state = live.lb.command("show servers state be_app")
    assert " rst-1 " in state and state.split(" rst-1 ")[1].split()[1] == "2", state  # srv_op_state 2: UP
    line = central(live, "lb-1", '"GET /work HTTP/1.1"')
    assert " 502 " in line.message and " SH-- " in line.message
    assert (line.tier, line.cluster, line.region, line.source) == ("lb", "edge", "primary", "haproxy")
    poll(
        lambda: live.mtail.value(requests, target="lb-1", termination="server_abort") == 40,
        20,
        "40 server aborts counted",
    )
    alert = wait_firing(prom, "LBServerSideTerminationsHigh", tier="lb", cluster="edge")
    assert float(alert["value"]) > 0.05


def test_an_app_route_that_throws_fires_the_uncaught_errors_alert(live: LiveLogs) -> None:
    prom, labels = live.prometheus, {"tier": "app", "cluster": "web", "target": "es-1"}
    uncaught = "tierwatch_log_app_uncaught_errors_total"
    wait_zero_series(prom, uncaught, **labels, route="/admin/throw")
    answer = httpx.get(
        f"{live.app.base_url}/admin/throw",
        headers={"Authorization": f"Bearer {live.app.admin_token}"},
        timeout=5,
    )
    assert answer.status_code == 500
    line = central(live, "es-1", '"msg":"uncaught error"')
    assert '"route":"/admin/throw"' in line.message and line.source == "app"
    poll(
        lambda: live.mtail.value(uncaught, target="es-1", route="/admin/throw") == 1, 20, "the error counted"
    )
    alert = wait_firing(prom, "AppUncaughtErrors", tier="app", cluster="web", route="/admin/throw")
    assert float(alert["value"]) >= 1


def test_a_failed_bgsave_and_misconf_writes_fire_the_redis_alert(live: LiveLogs) -> None:
    misconf = "tierwatch_log_app_redis_errors_total"
    wait_zero_series(live.prometheus, misconf, tier="app", cluster="web", target="es-1", kind="misconf")
    shutil.rmtree(live.redis.dir)  # its working directory: the snapshot child cannot write its file
    client = live.redis.client()
    try:
        misconf_fires(live, client)
    finally:  # no snapshot on shutdown, which would fail too and keep Redis from stopping
        client.config_set("save", "")


def misconf_fires(live: LiveLogs, client: Any) -> None:
    prom, misconf = live.prometheus, "tierwatch_log_app_redis_errors_total"
    client.bgsave()
    line = central(live, "redis-a", "Background saving error")
    assert (line.tier, line.cluster, line.region, line.source) == ("redis", "cache-main", "primary", "redis")
    warnings = "tierwatch_log_redis_warnings_total"
    poll(
        lambda: live.mtail.value(warnings, target="redis-a", kind="bgsave_failed") == 1, 20, "the failed save"
    )
    poll(lambda: client.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "Redis to record it")
    with httpx.Client(timeout=5) as http:
        answers = [http.post(f"{live.app.base_url}/jobs", json={"n": i}).status_code for i in range(3)]
    assert set(answers) == {503}  # the queue refused: MISCONF
    line = central(live, "es-1", '"msg":"redis error"')
    assert "MISCONF" in line.message
    poll(lambda: (live.mtail.value(misconf, target="es-1", kind="misconf") or 0) >= 3, 20, "MISCONF counted")
    alert = wait_firing(prom, "RedisMisconfOrOomSeen", tier="app", cluster="web", kind="misconf")
    assert alert["labels"]["severity"] == "critical"
