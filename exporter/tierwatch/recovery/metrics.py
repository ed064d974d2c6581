"""Metrics of the recovery service (served on its own /metrics; listed in docs/metrics.md).

These series are about clusters, so they carry ``tier`` and ``cluster`` plus the action; the rules in
rules/kit.rules.yml alert on them.
"""

from __future__ import annotations

from ..metric_catalog import metric

ACTIONS = (
    "redis_failover",
    "pg_promote",
    "restart_instance",
    "shift_traffic",
    "regional_failover",
    "cache_warmup",
)
# which tiers of cluster each action works on (for creating every series at 0 on start)
ACTION_TIERS = {
    "redis_failover": ("redis",),
    "pg_promote": ("postgres",),
    "restart_instance": ("app", "lb"),
    "shift_traffic": ("app",),
    "regional_failover": ("app",),
    "cache_warmup": ("redis",),
}
OUTCOMES = ("succeeded", "failed", "refused", "cancelled", "timed_out", "dry_run")
LIMITS = ("rate_limit", "cooldown", "cluster_lock", "max_lag", "not_allowed", "superseded")

ACTIONS_TOTAL = metric(
    "tierwatch_recovery_actions_total",
    "counter",
    "Recovery actions finished, by outcome: succeeded, failed, refused (live state said no), cancelled "
    "(alert resolved first), timed_out, dry_run.",
    ("action", "outcome"),
    scope="cluster",
    section="recovery",
)
BLOCKED_TOTAL = metric(
    "tierwatch_recovery_blocked_total",
    "counter",
    "Recovery actions not started because a safety limit stopped them (rate_limit, cooldown, "
    "cluster_lock, max_lag, not_allowed, superseded by a regional failover).",
    ("action", "limit"),
    scope="cluster",
    section="recovery",
)
FAILOVERS_TOTAL = metric(
    "tierwatch_recovery_failovers_total",
    "counter",
    "Failovers the recovery service completed (a new primary promoted, or traffic moved to another region).",
    ("action",),
    scope="cluster",
    section="recovery",
)
LAST_FAILOVER = metric(
    "tierwatch_recovery_last_failover_timestamp_seconds",
    "gauge",
    "Unix time of the last completed failover of the cluster.",
    scope="cluster",
    section="recovery",
)
NOTIFICATIONS_TOTAL = metric(
    "tierwatch_recovery_notifications_total",
    "counter",
    "Webhook notifications received, by result: accepted, duplicate, unauthorized, invalid, too_large.",
    ("result",),
    scope="exporter",
    section="recovery",
)
INBOX_PENDING = metric(
    "tierwatch_recovery_inbox_pending",
    "gauge",
    "Alerts recorded in the durable inbox whose action has not finished yet.",
    scope="exporter",
    section="recovery",
)
ACTION_DURATION = metric(
    "tierwatch_recovery_action_duration_seconds",
    "gauge",
    "How long the last run of each action took, from start to verified result.",
    ("action",),
    scope="cluster",
    section="recovery",
)
