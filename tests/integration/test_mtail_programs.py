"""The mtail programs of logs/mtail/ run by the real mtail binary (Debian's 3.0.0~rc50, `--one_shot`)
over central-log files: the fixtures in logs/testdata/ (message texts copied from real HAProxy 2.6,
PostgreSQL 15, Redis 7.0, the demo app and the kit's own log and audit writers), hostile lines, and
the lines the demo app writes when it really fails. Every counter and label is checked, and every
label value of every run must come from a fixed set or from the line's target fields."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tierwatch.events import EventLog
from tierwatch.recovery.audit import AuditTrail
from tierwatch.recovery.decisions_page import DECISION_EVENTS
from tierwatch.recovery.metrics import OUTCOMES
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.express import ExpressApp, start_express
from tierwatch_lab.stack.redis import start_redis

ROOT = Path(__file__).resolve().parents[2]
PROGS = ROOT / "logs" / "mtail"
TESTDATA = ROOT / "logs" / "testdata"
SERVER_JS = ROOT / "demo" / "app" / "server.js"
MTAIL = shutil.which("mtail")
pytestmark = pytest.mark.skipif(MTAIL is None, reason="mtail (Debian package mtail) not installed")

PROGRAMS = ("lines", "haproxy", "postgres", "redis", "app", "kit")
TERMINATIONS = (
    "normal",
    "client_abort",
    "client_timeout",
    "server_abort",
    "server_timeout",
    "connection_refused",
    "proxy",
    "other",
)
PG_LEVELS = ("debug", "info", "notice", "warning", "error", "log", "fatal", "panic")
PG_CLASSES = (
    "auth",
    "deadlock",
    "serialization",
    "too_many_connections",
    "disk_full",
    "query_canceled",
    "connection",
    "shutdown",
    "corruption",
    "other",
)
REDIS_KINDS = ("bgsave_failed", "aof_failed", "replica_lost", "master_lost", "master_unreachable", "crash")
ROUTES = ("/work", "/jobs", "/health", "/ready", "/metrics", "/admin/fault", "/admin/throw", "none", "other")
APP_REDIS_KINDS = ("misconf", "oom", "readonly", "auth", "connection", "other")
DECISIONS = (
    "started",
    "succeeded",
    "failed",
    "refused",
    "cancelled",
    "timed_out",
    "dry_run",
    "blocked",
    "handled_by_peer",
    "deferred",
    "stopped",
    "interrupted",
    "not_recorded",
    "other",
)
SOURCES = ("haproxy", "postgres", "redis", "app", "exporter", "recovery", "audit")
# every value a label may take; cluster, target and region: the names the lines of these tests use
FIXED: dict[str, set[str]] = {
    "tier": {"lb", "app", "redis", "sentinel", "postgres", "kit"},
    "source": set(SOURCES),
    "termination": set(TERMINATIONS),
    "kind": set(REDIS_KINDS)
    | set(APP_REDIS_KINDS)
    | {"server_down", "server_up", "no_server", "proxy_lifecycle"},
    "level": set(PG_LEVELS),
    "class": set(PG_CLASSES),
    "trigger": {"time", "wal", "other"},
    "route": set(ROUTES),
    "outcome": set(DECISIONS),
    "prog": {f"{name}.mtail" for name in PROGRAMS},
    "cluster": {"edge", "db-write", "main-db", "cache-main", "web", "tierwatch"},
    "target": {
        *("lb-1", "lb-2", "lbw-1", "pg-1", "pg-2", "pg-dr", "redis-a", "redis-b", "redis-d"),
        *("es-1", "es-3", "exporter-a", "recovery-1"),
    },
    "region": {"primary", "failover", "-"},
}
# tier, cluster and region of each target of the fixtures
PLACES = {
    "lb-1": ("lb", "edge", "primary"),
    "lb-2": ("lb", "edge", "primary"),
    "lbw-1": ("lb", "db-write", "primary"),
    "pg-1": ("postgres", "main-db", "primary"),
    "pg-2": ("postgres", "main-db", "primary"),
    "pg-dr": ("postgres", "main-db", "failover"),
    "redis-a": ("redis", "cache-main", "primary"),
    "redis-b": ("redis", "cache-main", "primary"),
    "redis-d": ("redis", "cache-main", "failover"),
    "es-1": ("app", "web", "primary"),
    "es-3": ("app", "web", "failover"),
    "exporter-a": ("kit", "tierwatch", "primary"),
    "recovery-1": ("kit", "tierwatch", "-"),
}
STAMP = "2026-12-07T18:23:31.644123+00:00"

Key = tuple[str, frozenset[tuple[str, str]]]


def key(name: str, target: str, /, **labels: str) -> Key:
    """A series of ``name`` for a fixture target, with its place labels and ``labels``."""
    tier, cluster, region = PLACES[target]
    place = {"tier": tier, "cluster": cluster, "target": target, "region": region}
    return name, frozenset({**place, **labels}.items())


def central(target: str, source: str, message: str) -> str:
    tier, cluster, region = PLACES[target]
    return f"{STAMP} {tier} {cluster} {target} {region} {source} {message}"


def run_mtail(tmp_path: Path, lines: Iterable[str] | bytes, name: str = "central.log") -> dict[Key, float]:
    """mtail --one_shot over a file of ``lines``: every sample without its ``prog`` label (each
    metric's program is checked here), after checking every label value is an allowed one."""
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    assert MTAIL is not None
    done = subprocess.run(
        [MTAIL, "--one_shot", "--one_shot_format", "prometheus", "--progs", str(PROGS), "--logs", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "untime error" not in done.stderr, done.stderr[-3000:]  # a program that failed on a line
    found: dict[Key, float] = {}
    for family in text_string_to_metric_families(done.stdout):
        for sample in family.samples:
            labels = dict(sample.labels)
            prog = labels.pop("prog")
            owner = (
                "lines"
                if sample.name.startswith(("tierwatch_log_lines", "tierwatch_log_malformed"))
                else None
            )
            if owner:
                assert prog == f"{owner}.mtail", sample
            for label, value in labels.items():
                assert value in FIXED[label], f"{sample.name}: {label}={value!r} is not an allowed value"
            k = (sample.name, frozenset(labels.items()))
            found[k] = found.get(k, 0.0) + sample.value
    return found


def counted(found: Mapping[Key, float], prefix: str) -> dict[Key, float]:
    """The non-zero series whose names start with ``prefix``."""
    return {k: v for k, v in found.items() if k[0].startswith(prefix) and v}


def fixture(name: str) -> list[str]:
    return (TESTDATA / name).read_text(encoding="utf-8").splitlines()


# --- the programs themselves --------------------------------------------------------------------------


def test_programs_compile() -> None:
    assert MTAIL is not None
    done = subprocess.run(
        [MTAIL, "--compile_only", "--progs", str(PROGS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {p.stem for p in PROGS.glob("*.mtail")} == set(PROGRAMS)


def test_every_program_reads_the_same_central_prefix() -> None:
    prefixes = {
        name: re.findall(r"^const CENTRAL (/.*/)$", (PROGS / f"{name}.mtail").read_text(), re.MULTILINE)
        for name in PROGRAMS
    }
    assert all(len(found) == 1 for found in prefixes.values()), prefixes
    assert len({found[0] for found in prefixes.values()}) == 1, prefixes


def test_app_routes_are_the_routes_of_server_js() -> None:
    declared = set(re.findall(r'app\.(?:get|post|put|all)\("([^"]+)"', SERVER_JS.read_text()))
    known = re.search(
        r"^const KNOWN_ROUTE /\^\(\?:(.*)\)\$/$", (PROGS / "app.mtail").read_text(), re.MULTILINE
    )
    assert known is not None
    assert {alt.replace("\\/", "/") for alt in known.group(1).split("|")} == declared
    assert declared | {"none", "other"} == set(ROUTES)


def test_decisions_are_those_of_the_recovery_service() -> None:
    """kit.mtail's mapping is the decisions page's: each decision event, each final outcome."""
    text = (PROGS / "kit.mtail").read_text()
    for event, outcome in DECISION_EVENTS.items():
        assert f'$event == "{event}"' in text, event
        if outcome is not None:
            assert f'["{outcome}"]++' in text, outcome
    listed = re.search(r'"outcome":"\(\?P<outcome>([a-z_|]+)\)"', text)
    assert listed is not None and set(listed.group(1).split("|")) == set(OUTCOMES)
    assert {o for o in DECISION_EVENTS.values() if o} | set(OUTCOMES) | {"other"} == set(DECISIONS)


# --- the fixtures -----------------------------------------------------------------------------------


def test_haproxy_lines(tmp_path: Path) -> None:
    found = run_mtail(tmp_path, fixture("haproxy.log"))
    requests = "tierwatch_log_haproxy_requests_total"
    tcp = "tierwatch_log_haproxy_tcp_connections_total"
    notices = "tierwatch_log_haproxy_notices_total"
    assert counted(found, "tierwatch_log_haproxy_") == {
        # lb-1: 13 requests in httplog format (one behind a syslog tag, one from an IPv6 client)
        key(requests, "lb-1", termination="normal"): 4,
        key(requests, "lb-1", termination="client_abort"): 1,  # CD--
        key(requests, "lb-1", termination="client_timeout"): 1,  # cR--
        key(requests, "lb-1", termination="server_abort"): 2,  # SH-- (a backend that resets)
        key(requests, "lb-1", termination="connection_refused"): 1,  # SC--
        key(requests, "lb-1", termination="server_timeout"): 3,  # sH--, sD--
        key(requests, "lb-1", termination="proxy"): 1,  # PR-- (a bad request refused by HAProxy)
        key("tierwatch_log_haproxy_retries_total", "lb-1"): 3,  # 2 (SC--) + 1 (+1)
        key("tierwatch_log_haproxy_redispatches_total", "lb-1"): 1,
        key(notices, "lb-1", kind="server_down"): 1,
        key(notices, "lb-1", kind="server_up"): 1,
        key(notices, "lb-1", kind="no_server"): 1,
        key(notices, "lb-1", kind="proxy_lifecycle"): 1,
        key(notices, "lb-2", kind="proxy_lifecycle"): 1,
        # lbw-1: the write LB's tcplog lines
        key(tcp, "lbw-1", termination="connection_refused"): 1,
        key(tcp, "lbw-1", termination="normal"): 1,
        key(tcp, "lbw-1", termination="server_abort"): 1,
        key(tcp, "lbw-1", termination="client_timeout"): 1,
        key("tierwatch_log_haproxy_retries_total", "lbw-1"): 2,
    }
    # a frontend without `option httplog` ("Connect from ...") is not understood
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "lb-1", source="haproxy"): 1
    }
    assert counted(found, "tierwatch_log_lines") == {
        key("tierwatch_log_lines_total", "lb-1", source="haproxy"): 18,
        key("tierwatch_log_lines_total", "lb-2", source="haproxy"): 1,
        key("tierwatch_log_lines_total", "lbw-1", source="haproxy"): 4,
    }
    # every termination class of each mode exists from that mode's first line on; lb-2 logged none
    for termination in TERMINATIONS:
        assert key(requests, "lb-1", termination=termination) in found
        assert key(tcp, "lbw-1", termination=termination) in found
        assert key(requests, "lb-2", termination=termination) not in found
        assert key(tcp, "lb-1", termination=termination) not in found
    for target in ("lb-1", "lb-2", "lbw-1"):
        assert key("tierwatch_log_haproxy_redispatches_total", target) in found
        assert key("tierwatch_log_unparsed_lines_total", target, source="haproxy") in found


def test_postgres_lines(tmp_path: Path) -> None:
    found = run_mtail(tmp_path, fixture("postgres.log"))
    errors, lines = "tierwatch_log_postgres_errors_total", "tierwatch_log_postgres_lines_total"
    checkpoints = "tierwatch_log_postgres_checkpoints_total"
    assert counted(found, "tierwatch_log_postgres_") == {
        # pg-1: a primary given a wrong password, an unknown role and database, a deadlock, a
        # serialization failure, a statement timeout, a bad query, too many clients, WAL pressure
        key(lines, "pg-1", level="log"): 22,
        key(lines, "pg-1", level="fatal"): 4,
        key(lines, "pg-1", level="error"): 4,
        key(errors, "pg-1", level="fatal", **{"class": "auth"}): 2,
        key(errors, "pg-1", level="fatal", **{"class": "other"}): 1,  # 3D000 database does not exist
        key(errors, "pg-1", level="fatal", **{"class": "too_many_connections"}): 1,
        key(errors, "pg-1", level="error", **{"class": "deadlock"}): 1,
        key(errors, "pg-1", level="error", **{"class": "serialization"}): 1,
        key(errors, "pg-1", level="error", **{"class": "query_canceled"}): 1,
        key(errors, "pg-1", level="error", **{"class": "other"}): 1,  # 42703
        key(checkpoints, "pg-1", trigger="wal"): 2,
        key(checkpoints, "pg-1", trigger="other"): 2,  # immediate force wait; shutdown immediate
        key("tierwatch_log_postgres_checkpoints_too_frequent_total", "pg-1"): 3,
        key("tierwatch_log_postgres_lock_waits_total", "pg-1"): 1,
        # pg-2: a replica whose primary went away (its WAL receiver's FATALs), then promoted
        key(lines, "pg-2", level="log"): 41,
        key(lines, "pg-2", level="fatal"): 11,
        key(errors, "pg-2", level="fatal", **{"class": "connection"}): 11,
        key(checkpoints, "pg-2", trigger="other"): 3,  # restartpoint immediate wait; force; shutdown
        # pg-dr: disk full up to a PANIC, corruption, a restart, a hostile login, a syslog tag
        key(lines, "pg-dr", level="log"): 7,
        key(lines, "pg-dr", level="fatal"): 3,
        key(lines, "pg-dr", level="error"): 3,
        key(lines, "pg-dr", level="warning"): 1,
        key(lines, "pg-dr", level="panic"): 1,
        key(errors, "pg-dr", level="fatal", **{"class": "shutdown"}): 2,  # 57P03 starting up, 57P01
        key(errors, "pg-dr", level="fatal", **{"class": "auth"}): 1,  # 28000 no pg_hba.conf entry
        key(errors, "pg-dr", level="error", **{"class": "disk_full"}): 1,
        key(errors, "pg-dr", level="error", **{"class": "corruption"}): 1,
        key(errors, "pg-dr", level="error", **{"class": "serialization"}): 1,
        key(errors, "pg-dr", level="panic", **{"class": "disk_full"}): 1,
        key(checkpoints, "pg-dr", trigger="time"): 2,
    }
    # a server logging in German: its lines are counted as not understood
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "pg-dr", source="postgres"): 1
    }
    for target in ("pg-1", "pg-2", "pg-dr"):
        for level in ("error", "fatal", "panic"):
            for cls in PG_CLASSES:
                assert key(errors, target, level=level, **{"class": cls}) in found
        for level in PG_LEVELS:
            assert key(lines, target, level=level) in found


def test_redis_lines(tmp_path: Path) -> None:
    found = run_mtail(tmp_path, fixture("redis.log"))
    warnings = "tierwatch_log_redis_warnings_total"
    assert counted(found, "tierwatch_log_redis_") == {
        # one failed save is counted once ("Background saving error"; the child's reason line is not),
        # once more behind a syslog tag; Redis' own log-file prefix is read too
        key(warnings, "redis-a", kind="bgsave_failed"): 2,
        key(warnings, "redis-a", kind="replica_lost"): 2,
        key(warnings, "redis-a", kind="aof_failed"): 2,
        key(warnings, "redis-b", kind="master_lost"): 2,
        key(warnings, "redis-b", kind="master_unreachable"): 3,
        key(warnings, "redis-d", kind="crash"): 1,
        key(warnings, "redis-d", kind="bgsave_failed"): 1,  # a fork that failed
    }
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "redis-d", source="redis"): 1
    }
    for target in ("redis-a", "redis-b", "redis-d"):
        for kind in REDIS_KINDS:
            assert key(warnings, target, kind=kind) in found


def test_app_lines(tmp_path: Path) -> None:
    found = run_mtail(tmp_path, fixture("app.log"))
    failed, uncaught = "tierwatch_log_app_5xx_responses_total", "tierwatch_log_app_uncaught_errors_total"
    redis_errors = "tierwatch_log_app_redis_errors_total"
    assert counted(found, "tierwatch_log_app_") == {
        # es-1: lines the demo app wrote (GET /admin/throw, injected faults, MISCONF, OOM)
        key(failed, "es-1", route="/admin/throw"): 1,
        key(failed, "es-1", route="/work"): 1,
        key(failed, "es-1", route="/jobs"): 3,
        key(uncaught, "es-1", route="/admin/throw"): 1,
        key(redis_errors, "es-1", kind="misconf"): 7,
        key(redis_errors, "es-1", kind="oom"): 5,
        # es-3: Redis away, a read-only replica, a wrong password, a crash outside any request
        key(failed, "es-3", route="/ready"): 1,
        key(failed, "es-3", route="/jobs"): 1,
        key(failed, "es-3", route="other"): 1,  # "unmatched" is not one of the routes
        key(uncaught, "es-3", route="none"): 1,
        key(redis_errors, "es-3", kind="connection"): 3,
        key(redis_errors, "es-3", kind="readonly"): 1,
        key(redis_errors, "es-3", kind="auth"): 2,
        key(redis_errors, "es-3", kind="other"): 1,  # LOADING
    }
    # Node's own crash report on stderr is plain text
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "es-3", source="app"): 2
    }
    for target in ("es-1", "es-3"):
        for route in ROUTES:
            assert key(failed, target, route=route) in found
            assert key(uncaught, target, route=route) in found
        for kind in APP_REDIS_KINDS:
            assert key(redis_errors, target, kind=kind) in found


def test_kit_lines(tmp_path: Path) -> None:
    found = run_mtail(tmp_path, fixture("kit.log"))
    kit, decisions = "tierwatch_log_kit_lines_total", "tierwatch_log_recovery_decisions_total"
    assert counted(found, "tierwatch_log_kit_") == {
        key(kit, "exporter-a", source="exporter", level="info"): 2,
        key(kit, "exporter-a", source="exporter", level="warning"): 2,
        key(kit, "exporter-a", source="exporter", level="error"): 1,
        key(kit, "recovery-1", source="recovery", level="info"): 1,
        key(kit, "recovery-1", source="recovery", level="warning"): 1,
        key(kit, "recovery-1", source="recovery", level="error"): 1,
    }
    # a decision's detail or a point of no return's decision that says "outcome" changes nothing
    assert counted(found, decisions) == {
        key(decisions, "recovery-1", outcome=outcome): 1
        for outcome in (
            *("started", "succeeded", "blocked", "refused", "handled_by_peer", "deferred", "stopped"),
            *("interrupted", "not_recorded", "timed_out", "dry_run"),
        )
    }
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "recovery-1", source="recovery"): 1,  # a traceback
        key("tierwatch_log_unparsed_lines_total", "recovery-1", source="audit"): 1,  # a torn last line
    }
    for outcome in DECISIONS:
        assert key(decisions, "recovery-1", outcome=outcome) in found
    assert key(decisions, "exporter-a", outcome="started") not in found


def test_kit_lines_as_the_kit_writes_them(tmp_path: Path) -> None:
    """Lines made now by the kit's own writers (EventLog in json, AuditTrail) are counted."""
    stream = io.StringIO()
    events = EventLog("json", "debug", stream)
    for level in ("debug", "info", "warning", "error"):
        events.emit("probe_failed", level, target="pg-1", reason='say "hi"\nand bye')
    trail = AuditTrail(tmp_path / "audit.jsonl")
    base = {"alert": 'Odd "alert"', "key": "k", "cluster": "main-db", "target": None}
    for event in DECISION_EVENTS:
        if event == "outcome":
            for outcome in (*OUTCOMES, "something_new"):
                trail.record(event, **base, action="pg_promote", outcome=outcome, detail=f"{outcome} ✓")
        else:
            trail.record(event, **base, action="pg_promote", reason="x")
    trail.record("lease_acquired", token=3, replica="recovery-1")
    trail.close()  # writes what is queued
    lines = [central("exporter-a", "exporter", line) for line in stream.getvalue().splitlines()]
    audit = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    lines += [central("recovery-1", "audit", line) for line in audit]
    found = run_mtail(tmp_path, lines)
    assert counted(found, "tierwatch_log_kit_") == {
        key("tierwatch_log_kit_lines_total", "exporter-a", source="exporter", level=level): 1
        for level in ("debug", "info", "warning", "error")
    }
    decisions = "tierwatch_log_recovery_decisions_total"
    expected_counts = {key(decisions, "recovery-1", outcome=outcome): 1 for outcome in (*OUTCOMES, "other")}
    for outcome in DECISION_EVENTS.values():
        if outcome is not None:
            expected_counts[key(decisions, "recovery-1", outcome=outcome)] = 1
    assert counted(found, decisions) == expected_counts
    assert not counted(found, "tierwatch_log_unparsed")


def test_every_fixture_line_is_in_the_central_format(tmp_path: Path) -> None:
    names = ("haproxy.log", "postgres.log", "redis.log", "app.log", "kit.log")
    lines = [line for name in names for line in fixture(name)]
    found = run_mtail(tmp_path, lines)
    assert sum(v for k, v in found.items() if k[0] == "tierwatch_log_lines_total") == len(lines)
    assert found.get(("tierwatch_log_malformed_lines_total", frozenset()), 0) == 0


# --- hostile lines ----------------------------------------------------------------------------------


def test_text_in_a_message_never_becomes_a_label_or_a_field(tmp_path: Path) -> None:
    fake = (
        f"{STAMP} lb edge lb-9 primary haproxy 10.6.6.6:1 [07/Dec/2026:18:23:31.644] fe be/x 0/0/0/0/0 503 1"
        " - - SC-- 1/1/1/1/+9 0/0"
    )
    lines = [
        # a PostgreSQL user name and query holding a whole fake central line and a fake part
        central("pg-1", "postgres", f'28P01 FATAL:  password authentication failed for user "{fake}"'),
        central(
            "pg-1",
            "postgres",
            "42601 ERROR:  syntax error at or near \"'\"#01242601 STATEMENT:  SELECT '#01253100 PANIC:  x' "
            "FROM users WHERE name = 'mallory' AND password = 'hunter2'",
        ),
        central("pg-1", "postgres", "00000 LOG:  statement: SELECT 'checkpoint starting: wal'"),
        # an HTTP request line that looks like the end of another log line
        central(
            "lb-1",
            "haproxy",
            "10.1.2.3:5555 [07/Dec/2026:18:23:31.644] fe_http be_app/es-1 0/0/0/1/1 200 117 - - ---- "
            '1/1/0/0/0 0/0 "GET /x?a=1%20SH--%201/1/1/1/+7%200/0 SH-- 1/1/1/1/+7 0/0 HTTP/1.1"',
        ),
        # JSON strings holding keys of their own: quotes inside a string are always escaped
        central(
            "es-1",
            "app",
            json.dumps(
                {
                    "time": "t",
                    "app": "es-1",
                    "msg": "redis error",
                    "level": "error",
                    "route": "/work",
                    "error": 'MISCONF x","msg":"uncaught error","route":"/admin/fault","status":"500',
                },
                separators=(",", ":"),
            ),
        ),
        central(
            "es-1",
            "app",
            json.dumps(
                {"time": "t", "app": 'es-1","msg":"request failed","route":"/work', "msg": "listening"},
                separators=(",", ":"),
            ),
        ),
        central(
            "recovery-1",
            "audit",
            json.dumps(
                {"ts": 1.5, "event": "outcome", "alert": 'x","outcome":"failed', "outcome": "succeeded"},
                separators=(",", ":"),
            ),
        ),
        # routes that are not one of the app's: a raw path, a query, an escaped quote, a long one
        *(
            central(
                "es-1",
                "app",
                json.dumps(
                    {
                        "time": "t",
                        "app": "es-1",
                        "msg": "request failed",
                        "level": "error",
                        "route": route,
                        "status": 500,
                    },
                    separators=(",", ":"),
                ),
            )
            for route in (
                "/work?user=mallory",
                "/users/12345",
                '/work"',
                "/work/../admin/fault",
                "/" + "w" * 5000,
                "/wörk",
            )
        ),
    ]
    found = run_mtail(tmp_path, lines)
    assert counted(found, "tierwatch_log_haproxy_") == {
        key("tierwatch_log_haproxy_requests_total", "lb-1", termination="normal"): 1,
    }
    assert counted(found, "tierwatch_log_postgres_errors") == {
        key("tierwatch_log_postgres_errors_total", "pg-1", level="fatal", **{"class": "auth"}): 1,
        key("tierwatch_log_postgres_errors_total", "pg-1", level="error", **{"class": "other"}): 1,
    }
    assert not counted(found, "tierwatch_log_postgres_checkpoints")
    assert counted(found, "tierwatch_log_app_") == {
        key("tierwatch_log_app_redis_errors_total", "es-1", kind="misconf"): 1,
        key("tierwatch_log_app_5xx_responses_total", "es-1", route="other"): 6,
    }
    assert counted(found, "tierwatch_log_recovery") == {
        key("tierwatch_log_recovery_decisions_total", "recovery-1", outcome="succeeded"): 1
    }
    assert not counted(found, "tierwatch_log_unparsed")
    assert sum(v for k, v in found.items() if k[0] == "tierwatch_log_lines_total") == len(lines)


def test_lines_outside_the_central_format_carry_no_labels(tmp_path: Path) -> None:
    good = central("pg-1", "postgres", '28P01 FATAL:  password authentication failed for user "x"')
    bad = [
        good.replace(" pg-1 ", " pg_1;drop "),  # not a tierwatch name
        good.replace(" pg-1 ", " pg-ü "),
        good.replace(" pg-1 ", " " + "p" * 64 + " "),  # longer than a name may be
        good.replace(" postgres main-db", " database main-db"),  # not a tier
        good.replace(" postgres 28P01", " postgresql 28P01"),  # not a source
        good.replace(STAMP, "Dec  7 18:23:31"),  # not RFC 3339
        good.replace(" primary ", "  primary "),
        "",
        "#012" * 100,
    ]
    found = run_mtail(tmp_path, [*bad, good])
    assert found[("tierwatch_log_malformed_lines_total", frozenset())] == len(bad)
    assert counted(found, "tierwatch_log_postgres_errors") == {
        key("tierwatch_log_postgres_errors_total", "pg-1", level="fatal", **{"class": "auth"}): 1
    }
    assert {k[0] for k in counted(found, "")} == {
        "tierwatch_log_malformed_lines_total",
        "tierwatch_log_lines_total",
        "tierwatch_log_postgres_lines_total",
        "tierwatch_log_postgres_errors_total",
    }


def test_long_lines_and_unicode(tmp_path: Path) -> None:
    padding = "x" * 10_240
    lines = [
        central("pg-1", "postgres", f'28P01 FATAL:  password authentication failed for user "{padding}☃"'),
        central(
            "pg-1", "postgres", f"42601 ERROR:  syntax error#01242601 STATEMENT:  SELECT '{'é' * 100_000}'"
        ),
        central(
            "lb-1",
            "haproxy",
            "10.1.2.3:5555 [07/Dec/2026:18:23:31.644] fe be/es-1 0/0/0/-1/0 502 209 - - SH-- 1/1/0/0/0 0/0 "
            f'"GET /{padding} HTTP/1.1"',
        ),
        central("redis-a", "redis", f"Connection with replica 127.0.0.1:6380 lost.{padding}"),
        central("redis-a", "redis", "Background saving error"),
        central(
            "es-1",
            "app",
            json.dumps(
                {
                    "time": "t",
                    "app": "es-1",
                    "msg": "uncaught error",
                    "level": "error",
                    "route": "/work",
                    "error": padding + "漢字",
                },
                separators=(",", ":"),
                ensure_ascii=False,
            ),
        ),
        central(
            "recovery-1",
            "audit",
            json.dumps(
                {"ts": 1.5, "event": "outcome", "alert": "A", "outcome": "failed", "detail": padding},
                separators=(",", ":"),
            ),
        ),
        central("exporter-a", "exporter", "{" + padding),
        central("pg-1", "postgres", "00000 LOG:  checkpoint starting: time"),
    ]
    found = run_mtail(tmp_path, lines)
    assert counted(found, "tierwatch_log_postgres_errors") == {
        key("tierwatch_log_postgres_errors_total", "pg-1", level="fatal", **{"class": "auth"}): 1,
        key("tierwatch_log_postgres_errors_total", "pg-1", level="error", **{"class": "other"}): 1,
    }
    assert counted(found, "tierwatch_log_postgres_checkpoints_total") == {
        key("tierwatch_log_postgres_checkpoints_total", "pg-1", trigger="time"): 1
    }
    assert counted(found, "tierwatch_log_haproxy_requests") == {
        key("tierwatch_log_haproxy_requests_total", "lb-1", termination="server_abort"): 1
    }
    # the replica line does not end where Redis' message does: not a known warning
    assert counted(found, "tierwatch_log_redis_") == {
        key("tierwatch_log_redis_warnings_total", "redis-a", kind="bgsave_failed"): 1
    }
    assert counted(found, "tierwatch_log_app_") == {
        key("tierwatch_log_app_uncaught_errors_total", "es-1", route="/work"): 1
    }
    assert counted(found, "tierwatch_log_recovery") == {
        key("tierwatch_log_recovery_decisions_total", "recovery-1", outcome="failed"): 1
    }
    assert counted(found, "tierwatch_log_unparsed") == {
        key("tierwatch_log_unparsed_lines_total", "exporter-a", source="exporter"): 1
    }


def test_bytes_that_are_not_utf8_must_not_reach_mtail(tmp_path: Path) -> None:
    """Debian's mtail 3.0.0~rc50 stops reading a file at the first byte sequence that is not UTF-8 or
    is U+FFFD (google/mtail#698): every later line is lost. So the collector replaces both
    (logs/README.md); so replaced, every line counts, valid UTF-8 included."""
    after = central("pg-1", "postgres", "40001 ERROR:  could not serialize access due to concurrent update")
    first = central("pg-1", "postgres", 'password authentication failed for user "').encode()
    first = first.replace(b"postgres password", b"postgres 28P01 FATAL:  password")
    for raw in ("caf\xc3\xa9 \xff\xfe".encode("latin-1"), "\ufffd".encode(), b"\xe2\x98"):
        content = first + raw + 'é 日本語"\n'.encode() + (after + "\n").encode() * 3
        found = run_mtail(tmp_path, content, name="raw.log")
        assert counted(found, "tierwatch_log_postgres_errors") == {
            key("tierwatch_log_postgres_errors_total", "pg-1", level="fatal", **{"class": "auth"}): 1
        }, "mtail read on after a bad byte sequence: the collector's rule may be relaxed"
        # what the collector does: invalid sequences and U+FFFD become "?", valid UTF-8 stays
        fixed = content.decode("utf-8", errors="replace").replace("\ufffd", "?")
        found = run_mtail(tmp_path, fixed.splitlines(), name="fixed.log")
        assert counted(found, "tierwatch_log_postgres_errors") == {
            key("tierwatch_log_postgres_errors_total", "pg-1", level="fatal", **{"class": "auth"}): 1,
            key(
                "tierwatch_log_postgres_errors_total", "pg-1", level="error", **{"class": "serialization"}
            ): 3,
        }


# --- the demo app's own lines ------------------------------------------------------------------------


def _request(
    app: ExpressApp, path: str, method: str = "GET", body: bytes | None = None, token: bool = False
) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {app.admin_token}"
    req = urllib.request.Request(f"{app.base_url}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_demo_app_logs_what_app_mtail_counts(stack: Stack, tmp_path: Path) -> None:
    """The real app, failing for real: a route that throws, injected 5xx, a malformed body (a 4xx:
    not an error of the app), MISCONF after a failed BGSAVE, OOM at maxmemory."""
    redis = start_redis(stack, "redis-a", extra_config=["save 3600 1"])
    client = redis.client()
    app = start_express(stack, "es-1", "primary", redis.url)
    try:
        assert _request(app, "/admin/throw") == 401
        assert _request(app, "/admin/throw", token=True) == 500
        assert _request(app, "/jobs", "POST", b"{not json") == 400
        app.set_fault(error_ratio=1)
        assert _request(app, "/work") == 500
        app.set_fault(error_ratio=0)
        # a BGSAVE that cannot write its file (its directory is gone): Redis refuses writes (MISCONF)
        shutil.rmtree(redis.dir)
        client.bgsave()
        deadline = time.monotonic() + 10
        while client.info("persistence")["rdb_last_bgsave_status"] != "err":
            assert time.monotonic() < deadline, "BGSAVE did not fail"
            time.sleep(0.05)
        assert _request(app, "/jobs", "POST", b"{}") == 503
        # at maxmemory the cache's SET of a miss (no /work has cached anything yet) is refused (OOM)
        client.config_set("maxmemory", "1")
        assert _request(app, "/work") == 200
    finally:
        client.config_set("maxmemory", "0")
        client.config_set("save", "")  # else it cannot stop: its last save would fail
    text = app.process.log_path.read_text(encoding="utf-8")
    lines = [central("es-1", "app", line) for line in text.splitlines() if line]
    found = run_mtail(tmp_path, lines)
    assert counted(found, "tierwatch_log_app_") == {
        key("tierwatch_log_app_uncaught_errors_total", "es-1", route="/admin/throw"): 1,
        key("tierwatch_log_app_5xx_responses_total", "es-1", route="/admin/throw"): 1,
        key("tierwatch_log_app_5xx_responses_total", "es-1", route="/work"): 1,
        key("tierwatch_log_app_5xx_responses_total", "es-1", route="/jobs"): 1,
        key("tierwatch_log_app_redis_errors_total", "es-1", kind="misconf"): 1,
        key("tierwatch_log_app_redis_errors_total", "es-1", kind="oom"): 1,
    }
    assert not counted(found, "tierwatch_log_unparsed"), text  # no plain-text stack traces
