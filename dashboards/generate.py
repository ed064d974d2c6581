"""Generate tierwatch's Grafana dashboards (dashboards/*.json) from code with grafana-foundation-sdk.

Run from the repository root: ``python -m dashboards.generate`` writes the JSON files;
``python -m dashboards.generate --check`` exits 1 when a committed file differs from what this code
produces; ``--settings FILE --out DIR`` renders them with the ``runbook_url_base`` of a settings file
of ``rules/generate.py --settings``, so that panel links follow the alerts' runbook links. Every panel
says what it shows (title, description, unit), queries the templated ``datasource``, filters on the
``cluster``/``region``/``target`` variables (``tier`` too on the overview), uses ``$__rate_interval``
in rate queries and links to the runbooks of the alerts it is about. tests/unit/test_dashboards.py lints the
result; docs/dashboards.md describes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import table as table_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import prometheus as prom_m

try:  # python -m dashboards.generate (and the tests' import)
    from . import traffic_panels
except ImportError:  # python dashboards/generate.py
    import traffic_panels  # type: ignore[no-redef]

OUT_DIR = Path(__file__).resolve().parent
# Where panel links point: <base>/<AlertName>.md, the same absolute base as the alerts' runbook_url
# (runbook_url_base of rules/src/settings.yml), so that a link from a panel and from an alert agree.
RULES_GENERATOR = OUT_DIR.parent / "rules" / "generate.py"
RUNBOOK_BASE_URL = yaml.safe_load((OUT_DIR.parent / "rules" / "src" / "settings.yml").read_text())[
    "runbook_url_base"
].rstrip("/")
# Grafana's import ("Dashboards > New > Import") asks for the inputs and checks the requirements;
# the generated JSON follows the schema of this Grafana version (grafana-foundation-sdk 10.1).
GRAFANA_VERSION = "10.1.0"
DS_INPUT = "DS_PROMETHEUS"
PANEL_NAMES = {"stat": "Stat", "table": "Table", "timeseries": "Time series"}
TAGS = ["tierwatch"]
DS = dash_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
RANGE = "$__range"  # only in instant "in the selected time range" totals (see tests/unit/test_dashboards.py)

# Matchers for the template variables, by what the series is about.
C = 'cluster=~"$cluster"'
R = f'{C}, region=~"$region"'
T = f'{R}, target=~"$target"'
TV = 'tier=~"$tier"'  # the overview's tier variable

Kind = Literal["stat", "timeseries", "table"]
Mapping = tuple[str, str, str]  # value, text, colour


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """What a panel shows; turned into SDK builders by ``build_panel``."""

    kind: Kind
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    alerts: tuple[str, ...] = ()
    width: int = 8
    height: int = 8
    mappings: tuple[Mapping, ...] = ()
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    row_link_alertname: bool = False  # table rows link to the runbook of their `alertname`

    @property
    def instant(self) -> bool:
        return self.kind != "timeseries"


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    """One dashboard: file name, stable uid, what it shows, its variables and rows."""

    file: str
    uid: str
    title: str
    description: str
    tiers: str  # regex of the tiers the cluster/region/target variables list
    rows: tuple[Row, ...]
    tier_variable: bool = False
    extra_variables: tuple[tuple[str, str, str], ...] = field(default=())  # name, label, label_values()


def sel(metric: str, *matchers: str) -> str:
    """A vector selector ``metric{m1, m2, ...}``."""
    return f"{metric}{{{', '.join(m for m in matchers if m)}}}"


def rate(metric: str, *matchers: str, fn: str = "rate", window: str = RATE) -> str:
    """``rate(metric{...}[$__rate_interval])`` (or another counter function/window)."""
    return f"{fn}({sel(metric, *matchers)}[{window}])"


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


def stat(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("stat", title, description, unit, queries, **kw)


def ts(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("timeseries", title, description, unit, queries, **kw)


def table(title: str, description: str, unit: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("table", title, description, unit, queries, **kw)


UP_DOWN: tuple[Mapping, ...] = (("1", "UP", "green"), ("0", "DOWN", "red"))
OK_FAIL: tuple[Mapping, ...] = (("1", "OK", "green"), ("0", "FAILING", "red"))
RED_AT_1 = ((None, "green"), (1.0, "red"))


def role_panel(title: str, tier: str, top: str, other: str, alerts: tuple[str, ...], **kw: Any) -> Panel:
    """A stat per target: up + 2 x (role == top), so one value tells role and health together."""
    tier_is, role_is = f'tier="{tier}"', f'role="{top}"'
    expr = (
        sel("tierwatch_up", tier_is, T)
        + " + ignoring(role) (2 * "
        + sel("tierwatch_role", tier_is, role_is, T)
        + ")"
    )
    return stat(
        title,
        f"Every {tier} target with its current role ({top} or {other}) and whether its last probe "
        f"succeeded. The role is the last one a successful probe saw, so a dead {top} stays marked.",
        "none",
        q(expr, "{{target}}"),
        alerts=alerts,
        mappings=(
            ("3", top.upper(), "green"),
            ("1", other, "blue"),
            ("2", f"{top.upper()} DOWN", "red"),
            ("0", f"{other} DOWN", "orange"),
        ),
        **kw,
    )


def live_primaries(tier: str, what: str, alerts: tuple[str, ...], **kw: Any) -> Panel:
    """Live primaries per cluster (cluster:tierwatch_live_primaries:count): 1 is healthy."""
    return stat(
        "Live primaries",
        f"{what} that are up, per cluster (cluster:tierwatch_live_primaries:count): 1 is healthy, "
        "0 means writes fail, 2 or more is split brain.",
        "none",
        q(sel("cluster:tierwatch_live_primaries:count", tier, C), "{{cluster}}"),
        alerts=alerts,
        thresholds=((None, "red"), (1.0, "green"), (2.0, "red")),
        **kw,
    )


# ---------------------------------------------------------------------------------------------- overview

OVERVIEW = Dashboard(
    file="overview.json",
    uid="tierwatch-overview",
    title="tierwatch / Overview",
    description="The whole stack on one screen: load balancers, app servers, Redis, PostgreSQL, queues, "
    "firing alerts and recent recovery actions. Is the stack healthy, and if not, where?",
    tiers="$tier",
    tier_variable=True,
    rows=(
        Row(
            "Stack health",
            (
                stat(
                    "Targets down by tier",
                    "Watched targets whose last probe failed, per tier (0 everywhere is healthy).",
                    "none",
                    q("sum by (tier) (1 - " + sel("tierwatch_up", TV, T) + ")", "{{tier}}"),
                    alerts=("AppInstanceDown", "LBBothDown", "PostgresReplicaDown"),
                    thresholds=RED_AT_1,
                    width=8,
                    height=5,
                ),
                live_primaries(
                    TV,
                    "Redis masters and PostgreSQL primaries",
                    ("RedisNoMaster", "RedisSplitBrain", "PostgresNoPrimary", "PostgresSplitBrain"),
                    width=5,
                    height=5,
                ),
                stat(
                    "VIP",
                    "Whether the load-balancer pair's shared address answers (what users reach).",
                    "none",
                    q(sel("tierwatch_lb_vip_up", TV, C), "{{cluster}}"),
                    alerts=("LBVipNotServed",),
                    mappings=(("1", "SERVING", "green"), ("0", "DOWN", "red")),
                    width=3,
                    height=5,
                ),
                stat(
                    "App availability (5m)",
                    "Share of app health checks that succeeded over 5 minutes, per cluster "
                    "(1 - cluster:tierwatch_slo_errors:ratio_avg5m); the SLO is 99.9%.",
                    "percentunit",
                    q("1 - " + sel("cluster:tierwatch_slo_errors:ratio_avg5m", TV, C), "{{cluster}}"),
                    alerts=("AppAvailabilityBurnRateCritical", "AppAvailabilityBurnRateTicket"),
                    thresholds=((None, "red"), (0.999, "green")),
                    width=4,
                    height=5,
                ),
                stat(
                    "Open circuits",
                    "Targets whose circuit breaker is open or half-open: reported down without being probed.",
                    "none",
                    q(
                        "sum(" + sel("tierwatch_circuit_state", TV, 'state=~"open|half_open"', T) + ")",
                        "open",
                    ),
                    alerts=("TierwatchCircuitOpen",),
                    thresholds=RED_AT_1,
                    width=4,
                    height=5,
                ),
            ),
        ),
        Row(
            "Load balancers and app servers",
            (
                role_panel(
                    "Load balancer pair",
                    "lb",
                    "active",
                    "standby",
                    ("LBActiveDown", "LBStandbyDown", "LBBothDown"),
                    width=6,
                    height=6,
                ),
                stat(
                    "App servers by region",
                    "Every app server, named region / target, and whether its health check passes.",
                    "none",
                    q(sel("tierwatch_up", 'tier="app"', T), "{{region}} / {{target}}"),
                    alerts=("AppInstanceDown", "AppRegionDown"),
                    mappings=UP_DOWN,
                    width=10,
                    height=6,
                ),
                stat(
                    "LB 5xx ratio",
                    "Share of the responses each frontend sent that were 5xx over 5 minutes.",
                    "percentunit",
                    q(
                        sel("cluster_proxy:tierwatch_lb_frontend_5xx:ratio_rate5m", 'tier="lb"', C),
                        "{{cluster}} {{proxy}}",
                    ),
                    alerts=("LB5xxRatioHigh",),
                    thresholds=((None, "green"), (0.05, "red")),
                    width=4,
                    height=6,
                ),
                stat(
                    "App latency p95 by region",
                    "95th percentile of app health-check latency per region over 5 minutes.",
                    "s",
                    q(
                        sel("cluster_region:tierwatch_probe_duration_seconds:p95_rate5m", 'tier="app"', R),
                        "{{region}}",
                    ),
                    alerts=("AppProbeLatencyHigh",),
                    thresholds=((None, "green"), (0.5, "red")),
                    width=4,
                    height=6,
                ),
            ),
        ),
        Row(
            "Data tier",
            (
                role_panel(
                    "Redis cluster",
                    "redis",
                    "primary",
                    "replica",
                    ("RedisMasterDown", "RedisReplicasMissing"),
                    width=8,
                    height=6,
                ),
                role_panel(
                    "PostgreSQL cluster",
                    "postgres",
                    "primary",
                    "replica",
                    ("PostgresPrimaryDown", "PostgresReplicaDown"),
                    width=8,
                    height=6,
                ),
                stat(
                    "Cache hit ratios",
                    "Redis keyspace and PostgreSQL shared-buffer hit ratio per target over 10 minutes "
                    "(target:tierwatch_cache_hit:ratio_rate10m).",
                    "percentunit",
                    q(sel("target:tierwatch_cache_hit:ratio_rate10m", TV, T), "{{tier}} {{target}}"),
                    alerts=(
                        "RedisCacheHitRatioLow",
                        "RedisCacheColdAfterFailover",
                        "PostgresCacheHitRatioLow",
                    ),
                    thresholds=((None, "red"), (0.8, "orange"), (0.9, "green")),
                    width=8,
                    height=6,
                ),
            ),
        ),
        Row(
            "Replication and queues",
            (
                ts(
                    "Replication lag (seconds)",
                    "How far each replica is behind its primary in time, where the server can tell.",
                    "s",
                    q(sel("tierwatch_replication_lag_seconds", TV, T), "{{tier}} {{target}}"),
                    alerts=("PostgresReplicationLagHigh", "PostgresDRReplicationLagHigh"),
                ),
                ts(
                    "Replication lag (bytes)",
                    "How far each replica is behind its primary in bytes of replication stream.",
                    "bytes",
                    q(sel("tierwatch_replication_lag_bytes", TV, T), "{{tier}} {{target}}"),
                    alerts=("RedisReplicationLagHigh",),
                ),
                ts(
                    "Queue backlogs",
                    "Jobs waiting to be picked up per queue (cluster_queue:tierwatch_queue_backlog:sum).",
                    "short",
                    q(sel("cluster_queue:tierwatch_queue_backlog:sum", TV, C), "{{cluster}} {{queue}}"),
                    alerts=("QueueBacklogHigh", "QueueBacklogGrowing"),
                ),
            ),
        ),
        Row(
            "Alerts and recovery",
            (
                table(
                    "Firing alerts",
                    "Alerts firing now (the Watchdog heartbeat left out); each row links to its runbook.",
                    "none",
                    q(
                        "sum by (alertname, severity, tier, cluster, target) ("
                        + sel("ALERTS", 'alertstate="firing"', 'alertname!="Watchdog"', TV, C)
                        + ")"
                    ),
                    row_link_alertname=True,
                    thresholds=((None, "red"),),
                    width=12,
                    height=8,
                ),
                table(
                    "Recent recovery actions",
                    "Actions the recovery service finished in the selected time range, by outcome.",
                    "none",
                    q(
                        "sum by (tier, cluster, action, outcome) ("
                        + rate("tierwatch_recovery_actions_total", TV, C, fn="increase", window=RANGE)
                        + ") > 0"
                    ),
                    alerts=("RecoveryActionFailed",),
                    width=12,
                    height=8,
                ),
            ),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------- LB

LB = Dashboard(
    file="lb.json",
    uid="tierwatch-lb",
    title="tierwatch / Load balancers",
    description="The HAProxy pair behind the VIP: which LB is active, frontend traffic and errors, "
    "backends and their servers.",
    tiers="lb",
    rows=(
        Row(
            "Pair",
            (
                role_panel(
                    "Load balancers",
                    "lb",
                    "active",
                    "standby",
                    ("LBActiveDown", "LBStandbyDown", "LBBothDown"),
                    width=10,
                    height=5,
                ),
                stat(
                    "VIP",
                    "Whether the pair's shared address answers with a 2xx/3xx status.",
                    "none",
                    q(sel("tierwatch_lb_vip_up", C), "{{cluster}}"),
                    alerts=("LBVipNotServed",),
                    mappings=(("1", "SERVING", "green"), ("0", "DOWN", "red")),
                    width=5,
                    height=5,
                ),
                stat(
                    "VIP served by a known LB",
                    "1 when the VIP's answer named one of the cluster's LBs in its served-by header.",
                    "none",
                    q(sel("tierwatch_lb_vip_identified", C), "{{cluster}}"),
                    mappings=(("1", "IDENTIFIED", "green"), ("0", "UNKNOWN", "orange")),
                    width=5,
                    height=5,
                ),
                stat(
                    "VIP probe latency",
                    "Latency of the last probe of the VIP.",
                    "s",
                    q(sel("tierwatch_lb_vip_probe_duration_seconds", C), "{{cluster}}"),
                    width=4,
                    height=5,
                ),
            ),
        ),
        Row(
            "Frontends",
            (
                ts(
                    "Frontend requests",
                    "HTTP requests received per second by each frontend of each LB.",
                    "reqps",
                    q(
                        f"sum by (target, proxy) ({rate('tierwatch_lb_frontend_requests_total', T)})",
                        "{{target}} {{proxy}}",
                    ),
                ),
                ts(
                    "Frontend responses by class",
                    "Responses per second the frontends sent, by status class.",
                    "reqps",
                    q(
                        f"sum by (proxy, code) ({rate('tierwatch_lb_frontend_responses_total', T)})",
                        "{{proxy}} {{code}}",
                    ),
                    alerts=("LB5xxRatioHigh",),
                ),
                ts(
                    "Frontend 5xx ratio",
                    "Share of frontend responses that were 5xx over 5 minutes, per cluster and frontend.",
                    "percentunit",
                    q(
                        sel("cluster_proxy:tierwatch_lb_frontend_5xx:ratio_rate5m", C),
                        "{{cluster}} {{proxy}}",
                    ),
                    alerts=("LB5xxRatioHigh",),
                ),
            ),
        ),
        Row(
            "Backends",
            (
                stat(
                    "Backends",
                    "Whether HAProxy has at least one usable server in each backend.",
                    "none",
                    q(sel("tierwatch_lb_backend_up", T), "{{target}} {{proxy}}"),
                    alerts=("LBBackendDown",),
                    mappings=UP_DOWN,
                    width=6,
                ),
                stat(
                    "Backend servers",
                    "Each server of each backend as the LB's health checks see it.",
                    "none",
                    q(sel("tierwatch_lb_server_up", T), "{{target}} {{server}}"),
                    alerts=("LBBackendServerDown",),
                    mappings=UP_DOWN,
                    width=10,
                ),
                ts(
                    "Active servers per backend",
                    "Active (non-backup) servers UP in each backend.",
                    "short",
                    q(sel("tierwatch_lb_backend_active_servers", T), "{{target}} {{proxy}}"),
                ),
                ts(
                    "Sessions",
                    "Current sessions on frontends and backends.",
                    "short",
                    q(sel("tierwatch_lb_frontend_sessions_current", T), "{{target}} frontend {{proxy}}"),
                    q(sel("tierwatch_lb_backend_sessions_current", T), "{{target}} backend {{proxy}}"),
                ),
                ts(
                    "Queued requests",
                    "Requests waiting for a server, per backend.",
                    "short",
                    q(sel("tierwatch_lb_backend_queue_current", T), "{{target}} {{proxy}}"),
                ),
                ts(
                    "Backend connection errors",
                    "Failed connections per second from the LBs to backend servers.",
                    "cps",
                    q(
                        f"sum by (target, proxy) ({rate('tierwatch_lb_backend_connection_errors_total', T)})",
                        "{{target}} {{proxy}}",
                    ),
                ),
                ts(
                    "Server weights",
                    "Effective weight of each server (traffic shifting lowers it).",
                    "short",
                    q(sel("tierwatch_lb_server_weight", T), "{{target}} {{server}}"),
                ),
            ),
        ),
    ),
)

LB = replace(LB, rows=(*LB.rows, *traffic_panels.lb_rows(sys.modules[__name__])))

# ---------------------------------------------------------------------------------------------- app

APP_T = ('tier="app"', T)

APP = Dashboard(
    file="app.json",
    uid="tierwatch-app",
    title="tierwatch / App servers",
    description="The app servers of both regions seen through their health checks: rate, errors, "
    "duration (RED) and the availability SLO.",
    tiers="app",
    rows=(
        Row(
            "Instances",
            (
                stat(
                    "App servers",
                    "Every app server, named region / target, and whether its health check passes.",
                    "none",
                    q(sel("tierwatch_up", *APP_T), "{{region}} / {{target}}"),
                    alerts=("AppInstanceDown", "AppRegionDown"),
                    mappings=UP_DOWN,
                    width=12,
                    height=5,
                ),
                stat(
                    "Availability SLO",
                    "Share of successful health checks per cluster over 1 hour and 1 day "
                    "(from cluster:tierwatch_slo_errors:ratio_avg*); the objective is 99.9%.",
                    "percentunit",
                    q(f"1 - {sel('cluster:tierwatch_slo_errors:ratio_avg1h', C)}", "{{cluster}} 1h"),
                    q(f"1 - {sel('cluster:tierwatch_slo_errors:ratio_avg1d', C)}", "{{cluster}} 1d"),
                    alerts=("AppAvailabilityBurnRateCritical", "AppAvailabilityBurnRateTicket"),
                    thresholds=((None, "red"), (0.999, "green")),
                    width=12,
                    height=5,
                ),
            ),
        ),
        Row(
            "Rate, errors, duration",
            (
                ts(
                    "Rate: health checks",
                    "Health checks per second, per region.",
                    "reqps",
                    q(
                        "sum by (cluster, region) (" + rate("tierwatch_probes_total", *APP_T) + ")",
                        "{{cluster}} {{region}}",
                    ),
                ),
                ts(
                    "Errors: failed checks by reason",
                    "Failed health checks per second by reason (protocol = wrong status or body).",
                    "cps",
                    q(
                        f"sum by (region, reason) ({rate('tierwatch_probe_failures_total', *APP_T)})",
                        "{{region}} {{reason}}",
                    ),
                    alerts=("AppErrorResponsesHigh",),
                ),
                ts(
                    "Errors: error answers ratio",
                    "Share of health checks answered with an error status or body over 5 minutes.",
                    "percentunit",
                    q(
                        sel("cluster_region:tierwatch_app_error_responses:ratio_rate5m", R),
                        "{{cluster}} {{region}}",
                    ),
                    alerts=("AppErrorResponsesHigh",),
                ),
                ts(
                    "Duration: latency p50 / p95",
                    "Health-check latency percentiles per region, over all its servers (the exporter's "
                    "histogram per cluster and region: the server filter does not apply).",
                    "s",
                    *(
                        q(
                            f"histogram_quantile({p}, sum by (region, le) "
                            f"({rate('tierwatch_cluster_probe_duration_seconds_bucket', APP_T[0], R)}))",
                            f"{{{{region}}}} p{int(p * 100)}",
                        )
                        for p in (0.5, 0.95)
                    ),
                    alerts=("AppProbeLatencyHigh",),
                ),
                ts(
                    "Duration: p95 over 5 minutes",
                    "95th percentile of health-check latency per region over 5 minutes (the alert's view).",
                    "s",
                    q(
                        sel("cluster_region:tierwatch_probe_duration_seconds:p95_rate5m", R),
                        "{{cluster}} {{region}}",
                    ),
                    alerts=("AppProbeLatencyHigh",),
                ),
                ts(
                    "Error budget burn (1h)",
                    "Health-check error ratio over 1 hour divided by the 0.1% budget: above 14.4 pages.",
                    "none",
                    q(f"{sel('cluster:tierwatch_slo_errors:ratio_avg1h', C)} / 0.001", "{{cluster}}"),
                    alerts=("AppAvailabilityBurnRateCritical",),
                ),
            ),
        ),
        Row(
            "Responses",
            (
                ts(
                    "HTTP status",
                    "Status code of each server's last health-check answer.",
                    "none",
                    q(sel("tierwatch_http_status_code", *APP_T), "{{target}}"),
                    width=12,
                ),
                ts(
                    "Response size",
                    "Body size of each server's last health-check answer "
                    "(opt-in: metrics.http_response_size).",
                    "bytes",
                    q(sel("tierwatch_http_response_size_bytes", *APP_T), "{{target}}"),
                    width=12,
                ),
            ),
        ),
    ),
)

APP = replace(APP, rows=(*APP.rows, *traffic_panels.app_rows(sys.modules[__name__])))

# ---------------------------------------------------------------------------------------------- Redis

RT = ('tier="redis"', T)

REDIS = Dashboard(
    file="redis.json",
    uid="tierwatch-redis",
    title="tierwatch / Redis",
    description="The Redis replication group and its Sentinels: roles, replication, cache hit ratio, "
    "memory, clients and commands.",
    tiers="redis|sentinel",
    rows=(
        Row(
            "Topology",
            (
                role_panel(
                    "Redis servers",
                    "redis",
                    "primary",
                    "replica",
                    ("RedisMasterDown", "RedisNoMaster", "RedisPrimaryRegionDown"),
                    width=10,
                    height=5,
                ),
                live_primaries(
                    'tier="redis"', "Masters", ("RedisNoMaster", "RedisSplitBrain"), width=4, height=5
                ),
                stat(
                    "Healthy replicas",
                    "Replicas up with their master link up, against the configured count.",
                    "none",
                    q(
                        sel("cluster:tierwatch_replicas_healthy:count", 'tier="redis"', C),
                        "{{cluster}} healthy",
                    ),
                    q(
                        sel("cluster:tierwatch_replicas_expected:count", 'tier="redis"', C),
                        "{{cluster}} expected",
                    ),
                    alerts=("RedisReplicasMissing",),
                    width=5,
                    height=5,
                ),
                stat(
                    "Sentinel quorum",
                    "1 when a Sentinel says enough Sentinels are reachable to fail the master over.",
                    "none",
                    q(sel("tierwatch_sentinel_quorum_reachable", 'tier="sentinel"', T), "{{target}}"),
                    alerts=("RedisSentinelQuorumLost",),
                    mappings=OK_FAIL,
                    width=5,
                    height=5,
                ),
            ),
        ),
        Row(
            "Replication",
            (
                ts(
                    "Replication lag",
                    "Bytes of replication stream each replica is behind its master.",
                    "bytes",
                    q(sel("tierwatch_replication_lag_bytes", *RT), "{{target}}"),
                    alerts=("RedisReplicationLagHigh",),
                ),
                stat(
                    "Replica links",
                    "On each replica: whether its link to its master is up.",
                    "none",
                    q(sel("tierwatch_redis_master_link_up", *RT), "{{target}}"),
                    alerts=("RedisReplicaLinkDown",),
                    mappings=UP_DOWN,
                ),
                ts(
                    "Connected replicas",
                    "Replicas connected to each server (INFO connected_slaves).",
                    "short",
                    q(sel("tierwatch_redis_connected_replicas", *RT), "{{target}}"),
                ),
                ts(
                    "Write fencing",
                    "On each master: replicas within min-replicas-max-lag (good) against "
                    "min-replicas-to-write (needed; absent where CONFIG GET is denied), and whether "
                    "fencing is on at all.",
                    "short",
                    q(sel("tierwatch_redis_min_replicas_good", *RT), "{{target}} good"),
                    q(sel("tierwatch_redis_min_replicas_to_write", *RT), "{{target}} needed"),
                    q(sel("tierwatch_redis_write_fencing", *RT), "{{target}} fencing on"),
                    alerts=("RedisWriteFencingOff", "RedisWriteFencingUnmet"),
                ),
            ),
        ),
        Row(
            "Cache and load",
            (
                ts(
                    "Cache hit ratio",
                    "Keyspace hits / lookups over 10 minutes (target:tierwatch_cache_hit:ratio_rate10m).",
                    "percentunit",
                    q(sel("target:tierwatch_cache_hit:ratio_rate10m", *RT), "{{target}}"),
                    alerts=("RedisCacheHitRatioLow", "RedisCacheColdAfterFailover"),
                ),
                ts(
                    "Commands",
                    "Commands processed per second.",
                    "ops",
                    q(rate("tierwatch_redis_commands_processed_total", *RT), "{{target}}"),
                ),
                ts(
                    "Evicted and expired keys",
                    "Keys evicted (maxmemory reached) and expired per second.",
                    "ops",
                    q(rate("tierwatch_redis_evicted_keys_total", *RT), "{{target}} evicted"),
                    q(rate("tierwatch_redis_expired_keys_total", *RT), "{{target}} expired"),
                    alerts=("RedisEvictions",),
                ),
                ts(
                    "Memory used",
                    "Memory allocated by Redis; the limit is maxmemory (0 = none).",
                    "bytes",
                    q(sel("tierwatch_redis_memory_used_bytes", *RT), "{{target}}"),
                    alerts=("RedisMemoryNearMax",),
                ),
                ts(
                    "Clients",
                    "Client connections and clients blocked in a blocking call.",
                    "short",
                    q(sel("tierwatch_redis_connected_clients", *RT), "{{target}} connected"),
                    q(sel("tierwatch_redis_blocked_clients", *RT), "{{target}} blocked"),
                    alerts=("RedisClientsNearMax",),
                ),
                ts(
                    "Rejected connections",
                    "Connections rejected per second because maxclients was reached.",
                    "cps",
                    q(rate("tierwatch_redis_rejected_connections_total", *RT), "{{target}}"),
                    alerts=("RedisRejectedConnections",),
                ),
            ),
        ),
        Row(
            "Persistence",
            (
                stat(
                    "Last RDB save and AOF write / rewrite",
                    "Result of each server's last RDB snapshot, and of its last AOF write and rewrite "
                    "where AOF is on (INFO persistence).",
                    "none",
                    q(sel("tierwatch_redis_rdb_last_bgsave_ok", *RT), "{{target}} RDB save"),
                    q(sel("tierwatch_redis_aof_last_write_ok", *RT), "{{target}} AOF write"),
                    q(sel("tierwatch_redis_aof_last_rewrite_ok", *RT), "{{target}} AOF rewrite"),
                    alerts=("RedisRdbSaveFailed", "RedisAofWriteFailed", "RedisAofRewriteFailed"),
                    mappings=OK_FAIL,
                    width=12,
                ),
                ts(
                    "Since the last RDB save",
                    "Age of each server's last successful snapshot, where snapshots are configured "
                    "(CONFIG GET save); writes since then are lost by a restart without AOF.",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_redis_rdb_last_save_timestamp_seconds', *RT)}",
                        "{{target}}",
                    ),
                    alerts=("RedisRdbSaveStale",),
                    width=12,
                ),
            ),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------- PostgreSQL

PT = ('tier="postgres"', T)

POSTGRES = Dashboard(
    file="postgres.json",
    uid="tierwatch-postgres",
    title="tierwatch / PostgreSQL",
    description="The PostgreSQL cluster: roles, streaming replication to the read and DR replicas, "
    "connections, transactions, WAL archiving.",
    tiers="postgres",
    rows=(
        Row(
            "Topology",
            (
                role_panel(
                    "PostgreSQL servers",
                    "postgres",
                    "primary",
                    "replica",
                    ("PostgresPrimaryDown", "PostgresReplicaDown", "PostgresPrimaryRegionDown"),
                    width=10,
                    height=5,
                ),
                live_primaries(
                    'tier="postgres"',
                    "Primaries",
                    ("PostgresNoPrimary", "PostgresSplitBrain"),
                    width=4,
                    height=5,
                ),
                stat(
                    "WAL receivers",
                    "On each replica: whether it streams WAL from its primary.",
                    "none",
                    q(sel("tierwatch_pg_wal_receiver_up", *PT), "{{target}}"),
                    alerts=("PostgresReplicaNotStreaming",),
                    mappings=(("1", "STREAMING", "green"), ("0", "NOT STREAMING", "red")),
                    width=5,
                    height=5,
                ),
                stat(
                    "Timeline",
                    "The timeline each server writes or replays; two primaries on different timelines "
                    "have diverged.",
                    "none",
                    q(sel("tierwatch_pg_timeline", *PT), "{{target}}"),
                    width=5,
                    height=5,
                ),
            ),
        ),
        Row(
            "Replication",
            (
                ts(
                    "Replication lag (seconds)",
                    "Time each replica is behind its primary (read replicas alert above 30 s, the DR "
                    "replica above 5 min).",
                    "s",
                    q(sel("tierwatch_replication_lag_seconds", *PT), "{{target}} ({{region}})"),
                    alerts=("PostgresReplicationLagHigh", "PostgresDRReplicationLagHigh"),
                ),
                ts(
                    "Replication lag (bytes)",
                    "WAL bytes each replica is behind its primary.",
                    "bytes",
                    q(sel("tierwatch_replication_lag_bytes", *PT), "{{target}} ({{region}})"),
                ),
                ts(
                    "Replay backlog",
                    "On each replica: WAL received but not yet replayed.",
                    "bytes",
                    q(sel("tierwatch_pg_replica_replay_backlog_bytes", *PT), "{{target}}"),
                ),
                ts(
                    "Synchronous standbys",
                    "On the primary: synchronous standbys streaming against the number commits wait for "
                    "(synchronous_standby_names; 0 = asynchronous), and 1 when synchronous_commit is "
                    "local or off.",
                    "short",
                    q(sel("tierwatch_pg_synchronous_standbys_streaming", *PT), "{{target}} streaming"),
                    q(sel("tierwatch_pg_synchronous_standbys_configured", *PT), "{{target}} required"),
                    q(sel("tierwatch_pg_synchronous_commit_local", *PT), "{{target}} commit local"),
                    alerts=("PostgresNoSynchronousStandby", "PostgresSynchronousStandbyMissing"),
                ),
                ts(
                    "WAL kept by replication slots",
                    "WAL each replication slot keeps from being removed.",
                    "bytes",
                    q(sel("tierwatch_pg_replication_slot_retained_wal_bytes", *PT), "{{target}} {{slot}}"),
                    alerts=("PostgresReplicationSlotInactive",),
                ),
            ),
        ),
        Row(
            "Load",
            (
                ts(
                    "Connections used",
                    "Client connections as a share of those open to ordinary roles.",
                    "percentunit",
                    q(sel("target:tierwatch_pg_connections:ratio", *PT), "{{target}}"),
                    alerts=("PostgresConnectionsNearMax",),
                ),
                ts(
                    "Connections by state",
                    "Client backends by state.",
                    "short",
                    q(
                        f"sum by (target, state) ({sel('tierwatch_pg_connections', *PT)})",
                        "{{target}} {{state}}",
                    ),
                    alerts=("PostgresConnectionsNearMax",),
                ),
                ts(
                    "Transactions",
                    "Commits and rollbacks per second.",
                    "ops",
                    q(rate("tierwatch_pg_commits_total", *PT), "{{target}} commits"),
                    q(rate("tierwatch_pg_rollbacks_total", *PT), "{{target}} rollbacks"),
                ),
                ts(
                    "Deadlocks",
                    "Deadlocks detected per second.",
                    "ops",
                    q(rate("tierwatch_pg_deadlocks_total", *PT), "{{target}}"),
                    alerts=("PostgresDeadlocks",),
                ),
                ts(
                    "Oldest transaction",
                    "Age of the longest-running transaction and of the longest idle-in-transaction session.",
                    "s",
                    q(sel("tierwatch_pg_oldest_transaction_age_seconds", *PT), "{{target}} transaction"),
                    q(
                        sel("tierwatch_pg_oldest_idle_in_transaction_age_seconds", *PT),
                        "{{target}} idle in tx",
                    ),
                    alerts=("PostgresLongTransaction",),
                ),
                ts(
                    "Shared-buffer hit ratio",
                    "Blocks found in shared buffers / blocks needed over 10 minutes.",
                    "percentunit",
                    q(sel("target:tierwatch_cache_hit:ratio_rate10m", *PT), "{{target}}"),
                    alerts=("PostgresCacheHitRatioLow",),
                ),
            ),
        ),
        Row(
            "WAL archiving and base backups",
            (
                ts(
                    "WAL archiving",
                    "WAL files archived and failed archive attempts per second.",
                    "ops",
                    q(rate("tierwatch_pg_wal_archived_total", *PT), "{{target}} archived"),
                    q(rate("tierwatch_pg_wal_archive_failures_total", *PT), "{{target}} failed"),
                    alerts=("PostgresWalArchivingFailing",),
                    width=12,
                ),
                stat(
                    "Since the last archived WAL",
                    "Time since each server last archived a WAL file.",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_pg_wal_last_archived_timestamp_seconds', *PT)}",
                        "{{target}}",
                    ),
                    alerts=("PostgresWalArchiveStale",),
                    thresholds=((None, "green"), (3600.0, "red")),
                    width=12,
                ),
                stat(
                    "Since the last base backup",
                    "Age of the cluster's newest base backup, from its backup.last_backup_file (read on "
                    "the primary); a missing file reads as never.",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_pg_base_backup_timestamp_seconds', *PT)}",
                        "{{cluster}} ({{target}})",
                    ),
                    alerts=("PostgresBaseBackupStale",),
                    thresholds=((None, "green"), (93600.0, "red")),
                    width=12,
                ),
            ),
        ),
    ),
)

# ---------------------------------------------------------------------------------------------- queues

QV = 'queue=~"$queue"'

QUEUES = Dashboard(
    file="queues.json",
    uid="tierwatch-queues",
    title="tierwatch / Queues",
    description="Job queues kept in Redis (BullMQ, Celery, RQ, lists, streams): backlog, age, failures "
    "and stream consumer groups.",
    tiers="redis",
    extra_variables=(("queue", "Queue", 'label_values(tierwatch_queue_length{cluster=~"$cluster"}, queue)'),),
    rows=(
        Row(
            "Backlog",
            (
                ts(
                    "Backlog",
                    "Jobs waiting to be picked up per queue (cluster_queue:tierwatch_queue_backlog:sum).",
                    "short",
                    q(sel("cluster_queue:tierwatch_queue_backlog:sum", C, QV), "{{cluster}} {{queue}}"),
                    alerts=("QueueBacklogHigh", "QueueBacklogGrowing"),
                ),
                ts(
                    "Jobs by state",
                    "Jobs in each queue by state (read on the cluster's current master).",
                    "short",
                    q(
                        "max by (queue, state) ("
                        + sel("tierwatch_queue_length", 'tier="redis"', T, QV)
                        + ")",
                        "{{queue}} {{state}}",
                    ),
                ),
                ts(
                    "Oldest waiting job",
                    "Age of the oldest waiting job per queue, where it can be known.",
                    "s",
                    q(
                        sel("cluster_queue:tierwatch_queue_oldest_age_seconds:max", C, QV),
                        "{{cluster}} {{queue}}",
                    ),
                    alerts=("QueueOldestJobTooOld",),
                ),
                ts(
                    "Failed jobs",
                    "Jobs in the failed state per queue (BullMQ, RQ).",
                    "short",
                    q(sel("cluster_queue:tierwatch_queue_failed:max", C, QV), "{{cluster}} {{queue}}"),
                    alerts=("QueueFailedJobsRising",),
                ),
                stat(
                    "Queues readable",
                    "1 when the queue's keys could be read (0: wrong key type, no permission).",
                    "none",
                    q(sel("tierwatch_redis_queue_read_ok", 'tier="redis"', T, QV), "{{queue}}"),
                    mappings=OK_FAIL,
                ),
                stat(
                    "Paused queues",
                    "BullMQ queues that are paused (jobs wait until resumed).",
                    "none",
                    q(sel("tierwatch_redis_queue_paused", 'tier="redis"', T, QV), "{{queue}}"),
                    mappings=(("0", "running", "green"), ("1", "PAUSED", "orange")),
                ),
            ),
        ),
        Row(
            "Stream consumer groups",
            (
                ts(
                    "Undelivered entries",
                    "Stream entries not yet delivered to each consumer group.",
                    "short",
                    q(sel("tierwatch_redis_stream_group_lag", 'tier="redis"', T, QV), "{{queue}} {{group}}"),
                    alerts=("QueueStreamConsumersStalled",),
                ),
                ts(
                    "Pending entries",
                    "Entries delivered to each group's consumers but not acknowledged.",
                    "short",
                    q(
                        sel("tierwatch_redis_stream_group_pending", 'tier="redis"', T, QV),
                        "{{queue}} {{group}}",
                    ),
                ),
                ts(
                    "Oldest pending entry idle",
                    "How long each group's oldest unacknowledged entry has waited.",
                    "s",
                    q(
                        sel(
                            "tierwatch_redis_stream_group_oldest_pending_idle_seconds", 'tier="redis"', T, QV
                        ),
                        "{{queue}} {{group}}",
                    ),
                    alerts=("QueueStreamConsumersStalled",),
                ),
                ts(
                    "Consumers",
                    "Consumers in each group.",
                    "short",
                    q(
                        sel("tierwatch_redis_stream_group_consumers", 'tier="redis"', T, QV),
                        "{{queue}} {{group}}",
                    ),
                    alerts=("QueueStreamConsumersStalled",),
                ),
            ),
        ),
    ),
)


def process_row(job: str, what: str) -> Row:
    """CPU, memory, file descriptors and garbage collections of the kit's own processes (prometheus-client's
    standard ``process_*`` and ``python_*`` series), for the jobs ``job`` (a ``job`` matcher) selects."""
    by = "{{job}} {{instance}}"
    return Row(
        "Process",
        (
            ts(
                "CPU",
                f"CPU time used per second by {what} (1 = 100% = one core), user and system together.",
                "percentunit",
                q(f"sum by (job, instance) ({rate('process_cpu_seconds_total', job)})", by),
                width=6,
            ),
            ts(
                "Resident memory",
                f"Resident set size of {what}. A line that only rises is a leak; TierwatchMemoryGrowing "
                "fires when the last hour's trend passes 512 MiB within 4 hours.",
                "bytes",
                q(sel("process_resident_memory_bytes", job), by),
                alerts=("TierwatchMemoryGrowing",),
                width=6,
            ),
            ts(
                "File descriptors in use",
                f"Open file descriptors of {what} as a share of their limit (process_open_fds / "
                "process_max_fds, the soft ulimit -n): sockets to targets, Prometheus, Alertmanager, files.",
                "percentunit",
                q(f"{sel('process_open_fds', job)} / {sel('process_max_fds', job)}", by),
                alerts=("TierwatchFileDescriptorsRunningOut",),
                thresholds=((None, "green"), (0.8, "red")),
                width=6,
            ),
            ts(
                "Garbage collections",
                f"Python garbage collector runs per second of {what}, by generation (frequent generation 2 "
                "runs mean many long-lived objects are being created).",
                "cps",
                q(
                    f"sum by (job, instance, generation) ({rate('python_gc_collections_total', job)})",
                    "{{job}} {{instance}} gen {{generation}}",
                ),
                width=6,
            ),
        ),
    )


# ---------------------------------------------------------------------------------------------- recovery

RECOVERY_ALERTS = ("RecoveryActionFailed", "RecoveryActionBlocked", "RecoveryFailoverHappened")

RECOVERY = Dashboard(
    file="recovery.json",
    uid="tierwatch-recovery",
    title="tierwatch / Recovery service",
    description="What `tierwatch recover` decided and did: actions by outcome, actions blocked by safety "
    "limits, failovers, webhook notifications, the durable inbox (its full audit is audit.jsonl) and the "
    "service's CPU, memory, file descriptors and garbage collections.",
    tiers=".*",
    rows=(
        Row(
            "Decisions",
            (
                ts(
                    "Actions by outcome",
                    "Recovery actions finished, by action and outcome (succeeded, failed, refused, "
                    "cancelled, timed_out, dry_run).",
                    "short",
                    q(
                        "sum by (cluster, action, outcome) ("
                        + rate("tierwatch_recovery_actions_total", C, fn="increase")
                        + ")",
                        "{{cluster}} {{action}} {{outcome}}",
                    ),
                    alerts=("RecoveryActionFailed",),
                    width=12,
                ),
                ts(
                    "Blocked by safety limits",
                    "Actions not started because a limit stopped them (rate_limit, cooldown, max_lag, "
                    "not_allowed, superseded, sentinel_unconfirmed).",
                    "short",
                    q(
                        "sum by (cluster, action, limit) ("
                        + rate("tierwatch_recovery_blocked_total", C, fn="increase")
                        + ")",
                        "{{cluster}} {{action}} {{limit}}",
                    ),
                    alerts=("RecoveryActionBlocked",),
                    width=12,
                ),
                table(
                    "Audit: decisions in the time range",
                    "Every action outcome in the selected time range (the audit trail as metrics).",
                    "none",
                    q(
                        "sum by (tier, cluster, action, outcome) ("
                        + rate("tierwatch_recovery_actions_total", C, fn="increase", window=RANGE)
                        + ") > 0"
                    ),
                    alerts=("RecoveryActionFailed",),
                    width=12,
                ),
                table(
                    "Audit: blocks in the time range",
                    "Every action a safety limit stopped in the selected time range.",
                    "none",
                    q(
                        "sum by (tier, cluster, action, limit) ("
                        + rate("tierwatch_recovery_blocked_total", C, fn="increase", window=RANGE)
                        + ") > 0"
                    ),
                    alerts=("RecoveryActionBlocked",),
                    width=12,
                ),
            ),
        ),
        Row(
            "Failovers",
            (
                stat(
                    "Failovers in the time range",
                    "Failovers the recovery service completed, per cluster.",
                    "none",
                    q(
                        "sum by (cluster) ("
                        + rate("tierwatch_recovery_failovers_total", C, fn="increase", window=RANGE)
                        + ")",
                        "{{cluster}}",
                    ),
                    alerts=("RecoveryFailoverHappened",),
                    thresholds=((None, "green"), (1.0, "orange")),
                ),
                stat(
                    "Last failover",
                    "When each cluster last failed over (only after a completed failover).",
                    "dateTimeFromNow",
                    q(
                        f"{sel('tierwatch_recovery_last_failover_timestamp_seconds', C)} * 1000",
                        "{{cluster}}",
                    ),
                ),
                ts(
                    "Last action duration",
                    "How long the last run of each action took, from start to verified result.",
                    "s",
                    q(sel("tierwatch_recovery_action_duration_seconds", C), "{{cluster}} {{action}}"),
                ),
            ),
        ),
        Row(
            "Intake",
            (
                ts(
                    "Webhook notifications",
                    "Notifications received from Alertmanager, by result (accepted, duplicate, "
                    "unauthorized, invalid, too_large).",
                    "short",
                    q(
                        f"sum by (result) ({rate('tierwatch_recovery_notifications_total', fn='increase')})",
                        "{{result}}",
                    ),
                    width=9,
                ),
                ts(
                    "Inbox pending",
                    "Alerts recorded in the durable inbox whose action has not finished yet.",
                    "short",
                    q(sel("tierwatch_recovery_inbox_pending"), "{{instance}}"),
                    width=9,
                ),
                stat(
                    "Recovery service scraped",
                    "Whether Prometheus scrapes the recovery service (job tierwatch-recovery); while it is "
                    "down, alerts with an action reach only people.",
                    "none",
                    q(sel("up", 'job="tierwatch-recovery"'), "{{instance}}"),
                    alerts=("TierwatchRecoveryAbsent",),
                    mappings=UP_DOWN,
                    width=6,
                ),
            ),
        ),
        process_row('job="tierwatch-recovery"', "the recovery service"),
    ),
)

# ---------------------------------------------------------------------------------------------- exporter

EXPORTER = Dashboard(
    file="exporter.json",
    uid="tierwatch-exporter",
    title="tierwatch / Exporter",
    description="The exporter itself: is it scraped, is its probe loop running, how long probes take, "
    "circuit breaker states, how fresh each target's data is, and the CPU, memory, file descriptors and "
    "garbage collections of the exporter and the recovery service.",
    tiers=".*",
    rows=(
        Row(
            "Exporter",
            (
                stat(
                    "Exporter scraped",
                    "Whether Prometheus scrapes each exporter (job tierwatch) successfully.",
                    "none",
                    q(sel("up", 'job="tierwatch"'), "{{instance}}"),
                    alerts=("TierwatchExporterAbsent", "TierwatchExporterDown"),
                    mappings=UP_DOWN,
                    width=6,
                    height=5,
                ),
                stat(
                    "Alerting pipeline",
                    "The Watchdog alert always fires; when it is missing, the rules are not evaluated.",
                    "none",
                    q(sel("ALERTS", 'alertname="Watchdog"', 'alertstate="firing"'), "Watchdog"),
                    alerts=("Watchdog",),
                    mappings=(("1", "FIRING (good)", "green"),),
                    width=6,
                    height=5,
                ),
                stat(
                    "Targets by state",
                    "Configured targets by state (up, down, unknown = not probed yet).",
                    "none",
                    q("sum by (state) (" + sel("tierwatch_targets") + ")", "{{state}}"),
                    width=6,
                    height=5,
                ),
                stat(
                    "Circuits",
                    "Targets by circuit breaker state; open and half-open targets are not probed.",
                    "none",
                    q("sum by (state) (" + sel("tierwatch_circuit_state", T) + ")", "{{state}}"),
                    alerts=("TierwatchCircuitOpen",),
                    width=6,
                    height=5,
                ),
            ),
        ),
        Row(
            "Probe loop",
            (
                ts(
                    "Probe rounds",
                    "Probe rounds completed per second (0 means the loop has stopped).",
                    "ops",
                    q(rate("tierwatch_probe_rounds_total"), "{{instance}}"),
                    alerts=("TierwatchProbesStalled",),
                ),
                ts(
                    "Probe round duration",
                    "Wall time of the last probe round (all targets, concurrently).",
                    "s",
                    q(sel("tierwatch_probe_round_duration_seconds"), "{{instance}}"),
                ),
                ts(
                    "Round overruns",
                    "Probe rounds per second that did not finish within the monitor interval.",
                    "ops",
                    q(rate("tierwatch_probe_round_overruns_total"), "{{instance}}"),
                ),
                ts(
                    "Scrape duration",
                    "How long Prometheus takes to scrape the exporter.",
                    "s",
                    q(sel("scrape_duration_seconds", 'job="tierwatch"'), "{{instance}}"),
                ),
            ),
        ),
        Row(
            "Probes",
            (
                ts(
                    "Probe duration",
                    "Duration of each target's last probe, successful or not.",
                    "s",
                    q(sel("tierwatch_probe_last_duration_seconds", T), "{{tier}} {{target}}"),
                ),
                ts(
                    "Probe failures by reason",
                    "Failed probes per second by target and reason.",
                    "cps",
                    q(
                        f"sum by (target, reason) ({rate('tierwatch_probe_failures_total', T)})",
                        "{{target}} {{reason}}",
                    ),
                ),
                ts(
                    "Probe error ratio",
                    "Failed / all probes per target over 5 min (target:tierwatch_probe_errors:ratio_rate5m).",
                    "percentunit",
                    q(sel("target:tierwatch_probe_errors:ratio_rate5m", T), "{{target}}"),
                ),
                ts(
                    "Data freshness",
                    "Seconds since each target was last probed (grows while its circuit is open or the "
                    "loop is stalled).",
                    "s",
                    q(f"time() - {sel('tierwatch_last_probe_timestamp_seconds', T)}", "{{target}}"),
                ),
            ),
        ),
        process_row('job=~"tierwatch|tierwatch-recovery"', "the exporter and the recovery service"),
    ),
)

try:
    from .hosts_dashboard import hosts_dashboard
except ImportError:  # python dashboards/generate.py
    from hosts_dashboard import hosts_dashboard  # type: ignore[no-redef]

DASHBOARDS: tuple[Dashboard, ...] = (
    OVERVIEW, LB, APP, REDIS, POSTGRES, QUEUES, RECOVERY, EXPORTER, hosts_dashboard(sys.modules[__name__])
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- building


def runbook_url(alert: str) -> str:
    return f"{RUNBOOK_BASE_URL}/{alert}.md"


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> dash_b.ThresholdsConfig:
    return (
        dash_b.ThresholdsConfig()
        .mode(dash_m.ThresholdsMode.ABSOLUTE)
        .steps([dash_m.Threshold(value=v, color=c) for v, c in steps])
    )


def _mappings(mappings: Sequence[Mapping]) -> list[dash_m.ValueMapping]:
    if not mappings:
        return []
    options = {
        value: dash_m.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, text, color) in enumerate(mappings)
    }
    return [dash_m.ValueMap(options=options)]


def build_panel(spec: Panel, panel_id: int) -> Builder[dash_m.Panel]:
    """The SDK builder of one panel."""
    builder: Any
    if spec.kind == "stat":
        builder = (
            stat_b.Panel()
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .color_mode(common_m.BigValueColorMode.BACKGROUND)
            .graph_mode(common_m.BigValueGraphMode.NONE)
            .text_mode(common_m.BigValueTextMode.VALUE_AND_NAME)
            .justify_mode(common_m.BigValueJustifyMode.AUTO)
            .orientation(common_m.VizOrientation.AUTO)
        )
    elif spec.kind == "timeseries":
        builder = (
            ts_b.Panel()
            .legend(
                common_b.VizLegendOptions()
                .display_mode(common_m.LegendDisplayMode.LIST)
                .placement(common_m.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .line_width(1)
            .fill_opacity(10)
        )
    else:
        builder = (
            table_b.Panel()
            .show_header(True)
            .with_transformation(
                dash_m.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True}})
            )
        )
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DS)
        .unit(spec.unit)
        .span(spec.width)
        .height(spec.height)
        .thresholds(_thresholds(spec.thresholds))
    )
    if spec.mappings:
        builder = builder.mappings(_mappings(spec.mappings))
    links = [
        dash_b.DashboardLink(f"Runbook: {alert}").url(runbook_url(alert)).target_blank(True)
        for alert in spec.alerts
    ]
    if links:
        builder = builder.links(links)
    if spec.row_link_alertname:
        builder = builder.data_links(
            [
                dash_b.DashboardLink("Runbook of ${__data.fields.alertname}")
                .url(f"{RUNBOOK_BASE_URL}/${{__data.fields.alertname}}.md")
                .target_blank(True)
            ]
        )
    for index, query in enumerate(spec.queries):
        target = prom_b.Dataquery().expr(query.expr).ref_id(chr(ord("A") + index)).datasource(DS)
        if query.legend:
            target = target.legend_format(query.legend)
        if spec.kind == "table":
            target = target.instant().format(prom_m.PromQueryFormat.TABLE)
        elif spec.instant:
            target = target.instant()
        else:
            target = target.range()
        builder = builder.with_target(target)
    return builder


def _query_variable(name: str, label: str, query: str) -> dash_b.QueryVariable:
    return (
        dash_b.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dash_m.VariableOption(selected=True, text="All", value="$__all"))
    )


def variables(spec: Dashboard) -> list[Builder[dash_m.VariableModel]]:
    """datasource, [tier,] cluster, region, target and the dashboard's extra variables."""
    tiers = f'tier=~"{spec.tiers}"'
    result: list[Builder[dash_m.VariableModel]] = [
        dash_b.DatasourceVariable("datasource").label("Data source").type("prometheus")
    ]
    if spec.tier_variable:
        result.append(_query_variable("tier", "Tier", "label_values(tierwatch_up, tier)"))
    result += [
        _query_variable("cluster", "Cluster", f"label_values(tierwatch_up{{{tiers}}}, cluster)"),
        _query_variable(
            "region", "Region", f'label_values(tierwatch_up{{{tiers}, cluster=~"$cluster"}}, region)'
        ),
        _query_variable(
            "target",
            "Target",
            f'label_values(tierwatch_up{{{tiers}, cluster=~"$cluster", region=~"$region"}}, target)',
        ),
    ]
    result += [_query_variable(name, label, query) for name, label, query in spec.extra_variables]
    return result


def build_dashboard(spec: Dashboard) -> dict[str, Any]:
    """The dashboard as JSON-ready data."""
    builder = (
        dash_b.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(TAGS)
        .readonly()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
        .link(
            dash_b.DashboardLink("tierwatch dashboards")
            .type(dash_m.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(variables(spec))
    )
    panel_id = 1
    for row in spec.rows:
        builder = builder.with_row(dash_b.Row(row.title).id(panel_id))
        panel_id += 1
        for panel in row.panels:
            builder = builder.with_panel(build_panel(panel, panel_id))
            panel_id += 1
    data: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return import_ready(data)


def import_ready(data: dict[str, Any]) -> dict[str, Any]:
    """Add what Grafana's import reads: ``__inputs`` (the Prometheus to use, which becomes the default of
    the ``datasource`` variable) and ``__requires`` (Grafana version, data source and panel plugins)."""
    data["__inputs"] = [
        {
            "name": DS_INPUT,
            "label": "Prometheus",
            "description": "The Prometheus that scrapes tierwatch and loads its rules",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    every_panel = [*data["panels"], *(inner for row in data["panels"] for inner in row.get("panels", []))]
    panel_types = sorted({panel["type"] for panel in every_panel if panel["type"] != "row"})
    data["__requires"] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": kind, "name": PANEL_NAMES[kind], "version": ""} for kind in panel_types),
    ]
    for variable in data["templating"]["list"]:
        if variable["type"] == "datasource":
            variable["current"] = {"selected": True, "text": f"${{{DS_INPUT}}}", "value": f"${{{DS_INPUT}}}"}
    return data


def render(spec: Dashboard) -> str:
    """The committed text of one dashboard file."""
    return json.dumps(build_dashboard(spec), indent=2, sort_keys=True) + "\n"


def settings_runbook_base(path: Path) -> str:
    """``runbook_url_base`` of rules/src/settings.yml with the overrides in ``path`` (the file
    ``rules/generate.py --settings`` takes, loaded and checked by that generator), without its '/'.
    Raises ValueError naming the file and the problems."""
    rules_gen = sys.modules.get("tierwatch_rules_generate")
    if rules_gen is None:
        spec = importlib.util.spec_from_file_location("tierwatch_rules_generate", RULES_GENERATOR)
        assert spec is not None and spec.loader is not None
        rules_gen = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = rules_gen
        spec.loader.exec_module(rules_gen)
    try:
        settings = rules_gen.load_settings(path)
    except rules_gen.SettingsError as exc:
        raise ValueError(str(exc)) from exc
    return str(settings["runbook_url_base"]).rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    global RUNBOOK_BASE_URL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed file is out of date")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write (default: dashboards/)")
    parser.add_argument(
        "--settings",
        type=Path,
        help="the overrides file of rules/generate.py --settings (its runbook_url_base)",
    )
    args = parser.parse_args(argv)
    default_base = RUNBOOK_BASE_URL
    if args.settings is not None:
        try:
            RUNBOOK_BASE_URL = settings_runbook_base(args.settings)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return _generate(args.out, args.check)
    finally:
        RUNBOOK_BASE_URL = default_base


def _generate(out: Path, check: bool) -> int:
    stale = []
    for spec in DASHBOARDS:
        path = out / spec.file
        text = render(spec)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m dashboards.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
