"""The recovery-service dashboard: what `tierwatch recover` decided and did."""

from __future__ import annotations

from .dsl import RANGE, UP_DOWN, C, Dashboard, Row, process_row, q, rate, sel, stat, table, ts

RECOVERY = Dashboard(
    file="recovery.json",
    uid="tierwatch-recovery",
    title="tierwatch / Recovery service",
    description="What `tierwatch recover` decided and did: actions by outcome, actions blocked by safety "
    "limits, failovers, the service-discovery DNS records (the exporter's check and the failovers' "
    "updates), webhook notifications, the durable inbox (its full audit is audit.jsonl) and the "
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
            "Service discovery (DNS records)",
            (
                stat(
                    "DNS records tell the truth",
                    "Whether each service_discovery record holds exactly the value of its cluster's live "
                    "primary (or of a region with an app server up), as the best-placed exporter sees it "
                    "at the authoritative server; absent while the server does not answer.",
                    "none",
                    q(
                        "max by (cluster, record, type) (" + sel("tierwatch_dns_record_matches", C) + ")",
                        "{{record}} {{type}}",
                    ),
                    alerts=("DnsRecordStale",),
                    mappings=(("1", "RIGHT", "green"), ("0", "STALE", "red")),
                ),
                stat(
                    "DNS server answers",
                    "Whether an exporter's last query of each record was answered by "
                    "service_discovery.server (an empty answer counts).",
                    "none",
                    q(
                        "max by (cluster, record, type) (" + sel("tierwatch_dns_record_up", C) + ")",
                        "{{record}} {{type}}",
                    ),
                    alerts=("DnsRecordUnanswered",),
                    mappings=UP_DOWN,
                ),
                ts(
                    "DNS record updates",
                    "The failovers' DNS step, per record and result (updated, unchanged, conflict, "
                    "refused, unavailable, protocol, no_value).",
                    "short",
                    q(
                        "sum by (cluster, record, result) ("
                        + rate("tierwatch_recovery_dns_updates_total", C, fn="increase")
                        + ")",
                        "{{cluster}} {{record}} {{result}}",
                    ),
                    alerts=("RecoveryDnsUpdateFailed",),
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
