"""The PostgreSQL dashboard: roles, streaming replication, load, WAL archiving and base backups."""

from __future__ import annotations

from .dsl import Dashboard, Row, T, live_primaries, q, rate, role_panel, sel, stat, ts

PT = ('tier="postgres"', T)
DEAD = sel("tierwatch_pg_table_dead_tuples", *PT)
ROLLBACKS = rate("tierwatch_pg_rollbacks_total", *PT)
PATRONI_LEADER = sel("tierwatch_patroni_role", *PT, 'role=~"primary|standby_leader"')
PATRONI_REPLICA = sel("tierwatch_patroni_role", *PT, 'role="replica"')

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
            "Patroni (clusters with patroni:)",
            (
                stat(
                    "Patroni leader",
                    "Patroni's role for each member (its REST API): the leader holds the lock; empty for "
                    "clusters without Patroni.",
                    "none",
                    q(
                        f"{PATRONI_LEADER} * ignoring (role) "
                        f"(1 - {sel('tierwatch_patroni_cluster_unlocked', *PT)})",
                        "{{target}}",
                    ),
                    alerts=("PostgresPatroniNoLeader", "PostgresPatroniLeaderMismatch"),
                    mappings=(("1", "LEADER", "green"), ("0", "replica", "blue")),
                    width=6,
                    height=5,
                ),
                stat(
                    "Patroni REST API",
                    "Whether each member's Patroni REST API answered at its last PostgreSQL probe.",
                    "none",
                    q(sel("tierwatch_patroni_up", *PT), "{{target}}"),
                    alerts=("PostgresPatroniRestApiDown",),
                    mappings=(("1", "UP", "green"), ("0", "DOWN", "red")),
                    width=6,
                    height=5,
                ),
                stat(
                    "Patroni streaming",
                    "Whether Patroni reports each replica streaming from its leader.",
                    "none",
                    q(
                        f"{sel('tierwatch_patroni_streaming', *PT)} and on (tier, cluster, target, region) "
                        f"{PATRONI_REPLICA} == 1",
                        "{{target}}",
                    ),
                    alerts=("PostgresPatroniMemberNotStreaming",),
                    mappings=(("1", "STREAMING", "green"), ("0", "NOT STREAMING", "red")),
                    width=6,
                    height=5,
                ),
                stat(
                    "Paused / failover disabled / pending restart",
                    "Maintenance mode of the cluster, members that may not be promoted, members waiting "
                    "for a restart.",
                    "none",
                    q(f"max by (cluster) ({sel('tierwatch_patroni_paused', *PT)})", "{{cluster}} paused"),
                    q(sel("tierwatch_patroni_failover_disabled", *PT), "{{target}} nofailover"),
                    q(sel("tierwatch_patroni_pending_restart", *PT), "{{target}} pending restart"),
                    alerts=(
                        "PostgresPatroniPaused",
                        "PostgresPatroniFailoverDisabled",
                        "PostgresPatroniPendingRestart",
                    ),
                    thresholds=((None, "green"), (1.0, "orange")),
                    width=6,
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
        Row(
            "Maintenance: wraparound, vacuum, locks, restarts",
            (
                ts(
                    "Transaction ID age",
                    "Transaction (and multixact) IDs since each database was last frozen, and the oldest "
                    "table of the probed database, on the primary; PostgreSQL stops writes near 2.1 billion.",
                    "short",
                    q(sel("tierwatch_pg_database_xid_age", *PT), "{{target}} {{database}}"),
                    q(sel("tierwatch_pg_database_mxid_age", *PT), "{{target}} {{database}} multixact"),
                    q(sel("tierwatch_pg_oldest_table_xid_age", *PT), "{{target}} {{database}} oldest table"),
                    alerts=("PostgresXidWraparoundWarning", "PostgresXidWraparoundCritical"),
                    width=12,
                ),
                ts(
                    "Dead rows of the top tables",
                    "Dead share of the tables with the most dead rows (cluster setting top_tables).",
                    "percentunit",
                    q(
                        f"{DEAD} / ({DEAD} + {sel('tierwatch_pg_table_live_tuples', *PT)})",
                        "{{target}} {{table}}",
                    ),
                    alerts=("PostgresDeadTuplesHigh",),
                    width=12,
                ),
                ts(
                    "Since the last vacuum and analyze",
                    "How long ago each of the same tables was last vacuumed and analyzed (automatically or "
                    "by hand; a table never vacuumed since the statistics were reset reads as since 1970).",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_pg_table_last_vacuum_timestamp_seconds', *PT)}",
                        "{{table}} vacuum",
                    ),
                    q(
                        f"time() - {sel('tierwatch_pg_table_last_analyze_timestamp_seconds', *PT)}",
                        "{{table}} analyze",
                    ),
                    alerts=("PostgresTableNotAutovacuumed", "PostgresTableNotAnalyzed"),
                    width=12,
                ),
                ts(
                    "Lock table and rollbacks",
                    "Share of the shared lock table in use, and share of transactions rolled back.",
                    "percentunit",
                    q(
                        f"{sel('tierwatch_pg_locks', *PT)} / {sel('tierwatch_pg_lock_slots', *PT)}",
                        "{{target}} lock table",
                    ),
                    q(
                        f"{ROLLBACKS} / ({rate('tierwatch_pg_commits_total', *PT)} + {ROLLBACKS})",
                        "{{target}} rolled back",
                    ),
                    alerts=("PostgresLockTableSaturated", "PostgresRollbackRatioHigh"),
                    width=12,
                ),
                stat(
                    "Up since / configuration loaded",
                    "How long ago each server started and last loaded its configuration files.",
                    "s",
                    q(f"time() - {sel('tierwatch_pg_start_time_seconds', *PT)}", "{{target}} started"),
                    q(f"time() - {sel('tierwatch_pg_config_load_time_seconds', *PT)}", "{{target}} config"),
                    alerts=("PostgresRestarted", "PostgresConfigurationChanged"),
                    thresholds=((None, "orange"), (900.0, "green")),
                    width=8,
                ),
                stat(
                    "Invalid indexes",
                    "Indexes left invalid by a failed concurrent build, per probed database.",
                    "none",
                    q(sel("tierwatch_pg_invalid_indexes", *PT), "{{target}} {{database}}"),
                    alerts=("PostgresInvalidIndex",),
                    thresholds=((None, "green"), (1.0, "red")),
                    width=4,
                ),
            ),
        ),
    ),
)
