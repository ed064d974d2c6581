"""Metrics of the recovery service (served on its own /metrics; listed in docs/metrics.md).

These series are about clusters, so they carry ``tier`` and ``cluster`` plus the action; the rules in
rules/kit.rules.yml alert on them.
"""

from __future__ import annotations

from .. import action_catalog as catalog
from ..metric_catalog import metric

# which tiers of cluster each action works on (for creating every series at 0 on start)
ACTION_TIERS = catalog.ACTION_TIERS
OUTCOMES = ("succeeded", "failed", "refused", "cancelled", "timed_out", "dry_run")
# what stopped an action: rate_limit, cooldown, not_allowed and superseded before it started;
# max_lag when every candidate was too far behind, sentinel_unconfirmed when Sentinel's choice was not
# confirmed (the action's Outcome.facts["limit"]). There is no cluster_lock limit: a second action on
# a locked cluster waits for the lock, it is not stopped.
LIMITS = (
    "rate_limit",
    "cooldown",
    "max_lag",
    "not_allowed",
    "superseded",
    "sentinel_unconfirmed",
    "patroni_unconfirmed",
    "patroni_paused",
)
# how a DNS record's update after a failover ended (recovery/dns_records.py)
DNS_RESULTS = ("updated", "unchanged", "conflict", "refused", "unavailable", "protocol", "no_value")

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
    "Recovery actions stopped by a safety limit (rate_limit, cooldown, not_allowed, superseded by a "
    "regional failover; max_lag: every promotion candidate too far behind; sentinel_unconfirmed: no "
    "Sentinel majority, or the member it named is not a master the kit accepts; patroni_unconfirmed: no "
    "majority of Patroni members named a leader the kit confirms within patroni_wait; patroni_paused: the "
    "Patroni cluster is in maintenance mode).",
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
DNS_UPDATES_TOTAL = metric(
    "tierwatch_recovery_dns_updates_total",
    "counter",
    "DNS records (service_discovery) the recovery service moved after a failover, by result: updated, "
    "unchanged (it already held the new value), conflict (it held a value the kit did not expect: not "
    "overwritten), refused (the server refused the update or its key), unavailable (no answer until "
    "update_timeout), protocol (a garbled answer, or the update did not read back), no_value (no value "
    "configured for the new primary or region). record is the owner name without its final dot.",
    ("record", "result"),
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
    "Webhook alerts and requests received, by result: accepted, duplicate (the same alert again, or "
    "another copy of an incident being handled), stale (firing after its own resolution), resolved, "
    "unauthorized, invalid, too_large, timed_out (body not received within read_timeout), unavailable "
    "(answered 503: the audit trail or the inbox could not be written, Alertmanager retries).",
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
TRUNCATED_ALERTS = metric(
    "tierwatch_recovery_truncated_alerts_total",
    "counter",
    "Alerts Alertmanager left out of its notifications (truncatedAlerts: its max_alerts was reached).",
    scope="exporter",
    section="recovery",
)
CONNECTIONS_DROPPED = metric(
    "tierwatch_recovery_connections_dropped_total",
    "counter",
    "HTTP connections the recovery service closed on its own, by reason: read_timeout (no complete "
    "request head in time), evicted (a slow connection closed to make room), over_limit.",
    ("reason",),
    scope="exporter",
    section="recovery",
)
CONFIG_RELOAD_SUCCESSFUL = metric(
    "tierwatch_recovery_config_last_reload_successful",
    "gauge",
    "1 if the last configuration reload of the recovery service (SIGHUP or POST /-/reload) succeeded, else "
    "0 (the previous config keeps running); 1 at start.",
    scope="exporter",
    section="recovery",
)
CONFIG_RELOAD_TIME = metric(
    "tierwatch_recovery_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the recovery service's last successful configuration load (the start, or a reload).",
    scope="exporter",
    section="recovery",
)
LEADER = metric(
    "tierwatch_recovery_leader",
    "gauge",
    "1 while this replica holds the recovery.ha leader lease in etcd and may act, else 0 (not exposed "
    "without recovery.ha: a single process always acts).",
    scope="exporter",
    section="recovery",
)
LEASE_LOST_TOTAL = metric(
    "tierwatch_recovery_lease_lost_total",
    "counter",
    "Times this replica stopped being the leader: its lease expired, etcd refused the renewal, or etcd "
    "could not be reached (no quorum) before the lease's deadline.",
    scope="exporter",
    section="recovery",
)
STATE_WRITABLE = metric(
    "tierwatch_recovery_state_writable",
    "gauge",
    "1 while the service's state can be written, by store: audit (the audit trail) and inbox (the durable "
    "inbox); 0 while writes fail (a full disk, an I/O error): webhooks are answered 503 and no action "
    "passes its point of no return until it can again.",
    ("store",),
    scope="exporter",
    section="recovery",
)
STATE_FAILURES_TOTAL = metric(
    "tierwatch_recovery_state_failures_total",
    "counter",
    "Times a store of the service's state (audit, inbox) stopped being writable; each recovers by itself "
    "once a write succeeds.",
    ("store",),
    scope="exporter",
    section="recovery",
)
