"""The overview dashboard: the whole stack on one screen."""

from __future__ import annotations

from .dsl import (
    RANGE,
    RED_AT_1,
    TV,
    UP_DOWN,
    C,
    Dashboard,
    R,
    Row,
    T,
    live_primaries,
    q,
    rate,
    role_panel,
    sel,
    stat,
    table,
    ts,
)

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
