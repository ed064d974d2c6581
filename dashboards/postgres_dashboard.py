"""The PostgreSQL dashboard: roles, streaming replication, load, WAL archiving and base backups."""

from __future__ import annotations

from .dsl import Dashboard, Row, T, live_primaries, q, rate, role_panel, sel, stat, ts

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
