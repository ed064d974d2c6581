"""The logs dashboard: the stack's logs turned into counters by the mtail programs of logs/mtail/
(scrape job ``logs``), per tier and kind, the targets that log the most, and the lines nobody reads."""

from __future__ import annotations

from .dsl import RANGE, UP_DOWN, C, Dashboard, Row, q, rate, sel, stat, table, ts

T = 'cluster=~"$cluster", region=~"$region", target=~"$target"'
SERVER_SIDE = 'termination=~"server_abort|server_timeout|connection_refused"'


def by(labels: str, metric: str, *matchers: str) -> str:
    """``sum by (labels) (rate(metric{T, matchers}[$__rate_interval]))``."""
    return f"sum by ({labels}) ({rate(metric, T, *matchers)})"


LOGS = Dashboard(
    file="logs.json",
    uid="tierwatch-logs",
    title="tierwatch / Logs",
    description="The stack's own logs as numbers: the central log (HAProxy's request log, PostgreSQL, Redis, "
    "the apps' error lines, the kit's logs and audit trail) counted by mtail with the programs of "
    "logs/mtail/ (job logs; logs/README.md). Rates per tier and kind, the targets that log the most, "
    "and the lines the programs cannot read. The kit's own lines carry cluster tierwatch.",
    tiers=".*",
    rows=(
        Row(
            "Log pipeline",
            (
                ts(
                    "Lines per second by tier and source",
                    "Lines of the central log per second, by the tier and the source named in each line.",
                    "cps",
                    q(by("tier, source", "tierwatch_log_lines_total"), "{{tier}} {{source}}"),
                    width=9,
                ),
                table(
                    "Top talkers",
                    "The ten targets that wrote the most lines in the selected time range, by source: a "
                    "target far above its peers is in trouble, or logs at a debug level.",
                    "short",
                    q(
                        "topk(10, sum by (tier, cluster, target, source) ("
                        + rate("tierwatch_log_lines_total", T, fn="increase", window=RANGE)
                        + "))"
                    ),
                    width=7,
                ),
                ts(
                    "Lines the programs cannot read",
                    "Lines per second of a source its program does not understand (a changed format or "
                    "setting: its counters miss them), and lines not in the central shape at all.",
                    "cps",
                    q(
                        by("tier, cluster, source", "tierwatch_log_unparsed_lines_total"),
                        "{{cluster}} {{source}}",
                    ),
                    q(f"sum({rate('tierwatch_log_malformed_lines_total')})", "not in the central shape"),
                    alerts=("TierwatchLogLinesUnparsed",),
                    width=5,
                ),
                stat(
                    "mtail scraped",
                    "Whether Prometheus scrapes mtail (job logs); while it is down no log alert can fire.",
                    "none",
                    q(sel("up", 'job="logs"')),
                    alerts=("TierwatchLogsDown",),
                    mappings=UP_DOWN,
                    width=3,
                ),
            ),
        ),
        Row(
            "Load balancers (HAProxy's request log)",
            (
                ts(
                    "Requests by termination",
                    "HTTP requests per second by who ended them (the termination state of each log line): "
                    "normal, the client (client_abort, client_timeout), the server (server_abort: a reset "
                    "or close, server_timeout, connection_refused) or HAProxy itself (proxy).",
                    "reqps",
                    q(
                        by("cluster, termination", "tierwatch_log_haproxy_requests_total"),
                        "{{cluster}} {{termination}}",
                    ),
                    alerts=("LBServerSideTerminationsHigh",),
                ),
                ts(
                    "Ended by the servers",
                    "The share of HTTP requests the backend servers ended (S and s termination states) per "
                    "LB cluster over 5 minutes: resets and timeouts that health checks do not see.",
                    "percentunit",
                    q(
                        sel("cluster:tierwatch_log_haproxy_server_terminations:ratio_rate5m", C),
                        "{{cluster}}",
                    ),
                    alerts=("LBServerSideTerminationsHigh",),
                    thresholds=((None, "green"), (0.05, "red")),
                ),
                ts(
                    "Retries, redispatches and server notices",
                    "Connection retries and redispatches to another server per second (from each request's "
                    "log line), and HAProxy's own notices: a server going DOWN, a backend left without one.",
                    "cps",
                    q(by("cluster", "tierwatch_log_haproxy_retries_total"), "{{cluster}} retries"),
                    q(by("cluster", "tierwatch_log_haproxy_redispatches_total"), "{{cluster}} redispatches"),
                    q(
                        by(
                            "cluster, kind",
                            "tierwatch_log_haproxy_notices_total",
                            'kind=~"server_down|no_server"',
                        ),
                        "{{cluster}} {{kind}}",
                    ),
                ),
            ),
        ),
        Row(
            "PostgreSQL",
            (
                ts(
                    "Errors by class",
                    "ERROR, FATAL and PANIC lines per second by SQLSTATE class: auth (28xxx), deadlock, "
                    "serialization, too_many_connections, disk_full, query_canceled (statement timeouts), "
                    "connection (a replica's WAL receiver), shutdown, corruption, other.",
                    "cps",
                    q(by("level, class", "tierwatch_log_postgres_errors_total"), "{{level}} {{class}}"),
                    alerts=("PostgresPanicOrFatalLogged", "PostgresSerializationFailuresHigh"),
                ),
                ts(
                    "Failed logins",
                    "Logins refused per second (SQLSTATE class 28: a wrong password, an unknown role, no "
                    "pg_hba.conf entry), per server. Who tried is in the log line, never in a label.",
                    "cps",
                    q(by("target", "tierwatch_log_postgres_errors_total", 'class="auth"'), "{{target}}"),
                    alerts=("PostgresAuthFailuresBurst",),
                ),
                ts(
                    "Checkpoints and lock waits",
                    "Checkpoints and restartpoints started per second by trigger (time, wal: max_wal_size "
                    "reached, other), the server's own 'checkpoints are occurring too frequently', and "
                    "sessions waiting longer than deadlock_timeout for a lock.",
                    "cps",
                    q(
                        by("target, trigger", "tierwatch_log_postgres_checkpoints_total"),
                        "{{target}} {{trigger}}",
                    ),
                    q(
                        by("target", "tierwatch_log_postgres_checkpoints_too_frequent_total"),
                        "{{target}} too frequent",
                    ),
                    q(by("target", "tierwatch_log_postgres_lock_waits_total"), "{{target}} lock waits"),
                ),
            ),
        ),
        Row(
            "Redis",
            (
                ts(
                    "Redis warnings by kind",
                    "Redis' own warnings per second: a failed background save or AOF write, a replica or "
                    "the master lost, a replica that cannot reach its master, a crash.",
                    "cps",
                    q(by("target, kind", "tierwatch_log_redis_warnings_total"), "{{target}} {{kind}}"),
                    width=12,
                ),
                ts(
                    "Errors the apps got from Redis",
                    "Redis errors the app servers logged per second by kind: misconf (writes refused after "
                    "a failed save), oom (maxmemory), readonly, auth, connection, other.",
                    "cps",
                    q(
                        by("cluster, region, kind", "tierwatch_log_app_redis_errors_total"),
                        "{{region}} {{kind}}",
                    ),
                    alerts=("RedisMisconfOrOomSeen",),
                    width=12,
                ),
            ),
        ),
        Row(
            "Apps (error tracking)",
            (
                ts(
                    "5xx answers by route",
                    "The app servers' 5xx answers per second, by route as the apps log them (other: any "
                    "value that is not one of the app's routes).",
                    "cps",
                    q(by("cluster, route", "tierwatch_log_app_5xx_responses_total"), "{{cluster}} {{route}}"),
                    width=12,
                ),
                ts(
                    "Uncaught errors by route",
                    "Errors no route handled, per second by route (none: outside any request; the process "
                    "exits). The message and stack are in the log line.",
                    "cps",
                    q(
                        by("cluster, route", "tierwatch_log_app_uncaught_errors_total"),
                        "{{cluster}} {{route}}",
                    ),
                    alerts=("AppUncaughtErrors",),
                    width=12,
                ),
            ),
        ),
        Row(
            "The kit",
            (
                ts(
                    "Kit log lines by level",
                    "The exporter's and the recovery service's JSON log lines per second, by level.",
                    "cps",
                    q(by("target, level", "tierwatch_log_kit_lines_total"), "{{target}} {{level}}"),
                    width=12,
                ),
                ts(
                    "Recovery decisions: audit trail and the service's own count",
                    "Decisions per interval as the audit trail records them (read from the log) beside the "
                    "actions the recovery service counts itself: two independent counts of what it did.",
                    "short",
                    q(
                        "sum by (outcome) ("
                        + rate("tierwatch_log_recovery_decisions_total", T, fn="increase")
                        + ")",
                        "audit {{outcome}}",
                    ),
                    q(
                        "sum by (outcome) ("
                        + rate("tierwatch_recovery_actions_total", C, fn="increase")
                        + ")",
                        "service {{outcome}}",
                    ),
                    width=12,
                ),
            ),
        ),
    ),
)
