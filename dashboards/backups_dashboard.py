"""The backups dashboard: pgBackRest backups and WAL archive, restore tests and Redis snapshots.

Two sources, as in rules/backups.rules.yml:

- the exporter (job ``tierwatch``) reads each PostgreSQL cluster's pgBackRest repository
  (``tierwatch_backup_*``, labels tier, cluster and, per backup type, ``type``);
- the batch commands ``tierwatch restore-test`` and ``tierwatch redis-snapshot`` write textfiles that
  node_exporter serves (job ``node``): ``tierwatch_restore_test_*`` and ``tierwatch_redis_backup_*``,
  labels tier, cluster and ``backup`` (the backup set).

Ages and thresholds follow the alerts: the red steps and the RPO/RTO objective lines are the thresholds
of rules/src/settings.yml (read here, so that a changed default moves the dashboard with the rules).
Several exporters may read one repository and several hosts may run one batch job: the panels take the
freshest view (max of the timestamps), and the batch jobs' results those of the newest run, as the
alerts do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .dsl import OK_FAIL, RED_AT_1, C, Dashboard, Mapping, Row, T, q, sel, stat, ts

SETTINGS = Path(__file__).resolve().parents[1] / "rules" / "src" / "settings.yml"
THRESHOLDS: dict[str, Any] = yaml.safe_load(SETTINGS.read_text())["thresholds"]

EXPORTER, NODE = 'job="tierwatch"', 'job="node"'
B = 'backup=~"$backup"'
PG = (EXPORTER, 'tier="postgres"', C)  # the exporter's pgBackRest series
RESTORE = (NODE, C, B)  # restore tests (PostgreSQL and Redis sets)
REDIS = (NODE, 'tier="redis"', C, B)  # Redis snapshots
SET = "tier, cluster, backup"
SET_LEGEND = "{{cluster}} / {{backup}}"

PASS_FAIL: tuple[Mapping, ...] = (("1", "PASSED", "green"), ("0", "FAILED", "red"))
STANZA_STATUS: tuple[Mapping, ...] = (
    ("0", "OK", "green"),
    ("1", "MISSING STANZA PATH", "red"),
    ("2", "NO VALID BACKUP", "red"),
    ("3", "MISSING STANZA DATA", "red"),
    ("4", "DIFFERENT CIPHER", "red"),
    ("5", "DATABASE MISMATCH", "red"),
    ("99", "OTHER ERROR", "red"),
)
INFORMATIONAL = ((None, "blue"),)
WAL_PUSH_AGE = "pg_wal_archive_push_age_seconds"


def threshold(name: str) -> float:
    """A threshold of rules/src/settings.yml, in the unit the rules use."""
    return float(THRESHOLDS[name])


def red_above(name: str) -> tuple[tuple[float | None, str], ...]:
    """Green, red from the alert's threshold ``name`` on."""
    return ((None, "green"), (threshold(name), "red"))


def human(seconds: float) -> str:
    """``900`` -> ``15m``, ``3600`` -> ``1h``, ``93600`` -> ``26h`` (for legends)."""
    for size, suffix in ((3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{suffix}"
    return f"{seconds:g}s"


def top(by: str, metric: str, *matchers: str) -> str:
    """``metric`` per ``by``, the largest of several exporters' or hosts' values."""
    return f"max by ({by}) ({sel(metric, *matchers)})"


def age(metric: str, by: str, *matchers: str) -> str:
    """Seconds since the newest timestamp of ``metric`` per ``by`` (the freshest exporter or host)."""
    return f"time() - {top(by, metric, *matchers)}"


def newest_run(metric: str, stamp: str, *matchers: str) -> str:
    """``metric`` of the newest run of each backup set (the host whose ``stamp`` is the newest), as
    RestoreTestFailed, RestoreTestRpoBreached and RedisBackupFailed read it."""
    return (
        f"max by ({SET}) ({sel(metric, *matchers)} and {sel(stamp, *matchers)}"
        f" == on ({SET}) group_left () max by ({SET}) ({sel(stamp, *matchers)}))"
    )


def objective_panel(title: str, what: str, metric: str, objective: str, alert: str) -> Any:
    """RPO or RTO of each set's newest successful restore test over time, with its objective as a line."""
    value = threshold(objective)
    return ts(
        title,
        f"{what} of the newest successful restore test of each backup set, against the objective "
        f"({human(value)}, {objective} of rules/src/settings.yml, the threshold of {alert}; the flat "
        "line). The value changes only when a restore test succeeds.",
        "s",
        q(newest_run(metric, "tierwatch_restore_test_last_success_timestamp_seconds", *RESTORE), SET_LEGEND),
        q(f"vector({value:g})", f"objective ({human(value)})"),
        alerts=(alert,),
        thresholds=((None, "green"), (value, "red")),
        width=12,
    )


BACKUPS = Dashboard(
    file="backups.json",
    uid="tierwatch-backups",
    title="tierwatch / Backups and restore tests",
    description="Can we restore, and how much would we lose? The pgBackRest backups of each PostgreSQL "
    "cluster (age, duration, size, errors by type), the repository and its WAL archive (read health, "
    "stanza status, newest WAL, gaps), the restore tests of every backup set (result, age, RPO and RTO "
    "against the objectives) and the Redis snapshots (result, age, size, duration).",
    tiers="postgres|redis",
    extra_variables=(
        (
            "backup",
            "Backup set",
            f"label_values(tierwatch_restore_test_last_run_timestamp_seconds{{{NODE}, {C}}}, backup)",
        ),
    ),
    rows=(
        Row(
            "pgBackRest backups",
            (
                stat(
                    "Since the newest backup",
                    "Per PostgreSQL cluster: time since the newest backup of any type in its pgBackRest "
                    "repository finished (the view of PostgresBackupStale; red from "
                    f"{human(threshold('pg_backup_age_seconds'))}).",
                    "s",
                    q(
                        age("tierwatch_backup_last_completion_timestamp_seconds", "tier, cluster", *PG),
                        "{{cluster}}",
                    ),
                    alerts=("PostgresBackupStale",),
                    thresholds=red_above("pg_backup_age_seconds"),
                    width=6,
                    height=6,
                ),
                stat(
                    "Since the newest backup, by type",
                    "Per cluster and backup type (full, diff, incr): time since the newest backup of that "
                    "type finished. Full backups are usually rarer than the others; only the newest of any "
                    "type is alerted on.",
                    "s",
                    q(
                        age("tierwatch_backup_last_completion_timestamp_seconds", "tier, cluster, type", *PG),
                        "{{cluster}} {{type}}",
                    ),
                    thresholds=INFORMATIONAL,
                    width=10,
                    height=6,
                ),
                stat(
                    "Backups kept",
                    "How many backups of each type the repository holds (pgBackRest's retention expires "
                    "the oldest).",
                    "none",
                    q(top("tier, cluster, type", "tierwatch_backups", *PG), "{{cluster}} {{type}}"),
                    thresholds=INFORMATIONAL,
                    width=4,
                    height=6,
                ),
                stat(
                    "Errors in the newest backups",
                    "Whether the newest backup of each type recorded errors (pgBackRest's error flag, "
                    "e.g. page checksum failures): the database or the backup is damaged.",
                    "none",
                    q(
                        top("tier, cluster, type", "tierwatch_backup_last_error", *PG),
                        "{{cluster}} {{type}}",
                    ),
                    alerts=("PostgresBackupFailed",),
                    mappings=(("0", "OK", "green"), ("1", "ERRORS", "red")),
                    thresholds=RED_AT_1,
                    width=4,
                    height=6,
                ),
                ts(
                    "Backup duration",
                    "How long the newest backup of each type took (its stop time minus its start time).",
                    "s",
                    q(
                        top("tier, cluster, type", "tierwatch_backup_last_duration_seconds", *PG),
                        "{{cluster}} {{type}}",
                    ),
                    width=12,
                ),
                ts(
                    "Backup size",
                    "The newest backup of each type: the database size it covers, and what it stored in "
                    "the repository (compressed; a diff or incr stores only what changed).",
                    "bytes",
                    q(
                        top("tier, cluster, type", "tierwatch_backup_last_size_bytes", *PG),
                        "{{cluster}} {{type}} database",
                    ),
                    q(
                        top("tier, cluster, type", "tierwatch_backup_last_repository_size_bytes", *PG),
                        "{{cluster}} {{type}} stored",
                    ),
                    width=12,
                ),
            ),
        ),
        Row(
            "Repository",
            (
                stat(
                    "Repository read",
                    "Whether each exporter's last read of the pgBackRest repository (pgbackrest info and "
                    "repo-ls, within their time and size bounds) succeeded. While no exporter reads it, "
                    "the backup alerts are blind.",
                    "none",
                    q(sel("tierwatch_backup_info_up", *PG), "{{cluster}} ({{instance}})"),
                    alerts=("PostgresBackupInfoFailing",),
                    mappings=OK_FAIL,
                    thresholds=((None, "red"), (1.0, "green")),
                    width=6,
                    height=6,
                ),
                stat(
                    "Stanza status",
                    "pgBackRest's status of the cluster's stanza: OK, or why there may be nothing to "
                    "restore (missing stanza path or data, no valid backup, different cipher, database "
                    "mismatch, other).",
                    "none",
                    q(
                        top("tier, cluster", "tierwatch_backup_stanza_status_code", *PG),
                        "{{cluster}}",
                    ),
                    alerts=("PostgresBackupFailed",),
                    mappings=STANZA_STATUS,
                    thresholds=RED_AT_1,
                    width=6,
                    height=6,
                ),
                stat(
                    "Since the last repository read",
                    "Time since each exporter last read the repository, successfully or not (it reads "
                    "every backup.pgbackrest.interval).",
                    "s",
                    q(
                        f"time() - {sel('tierwatch_backup_info_last_read_timestamp_seconds', *PG)}",
                        "{{cluster}} ({{instance}})",
                    ),
                    thresholds=INFORMATIONAL,
                    width=6,
                    height=6,
                ),
                ts(
                    "Repository read duration",
                    "How long each exporter's last read of the repository took (both commands).",
                    "s",
                    q(sel("tierwatch_backup_info_read_duration_seconds", *PG), "{{cluster}} ({{instance}})"),
                    width=6,
                    height=6,
                ),
            ),
        ),
        Row(
            "WAL archive",
            (
                stat(
                    "Since the newest archived WAL",
                    "Time since the newest WAL segment reached the repository (its file time). Old while "
                    "the primary writes WAL means point-in-time recovery would lose what came after "
                    f"(PostgresWalArchiveBehind; red from {human(threshold(WAL_PUSH_AGE))}).",
                    "s",
                    q(
                        age("tierwatch_backup_wal_archive_last_push_timestamp_seconds", "tier, cluster", *PG),
                        "{{cluster}}",
                    ),
                    alerts=("PostgresWalArchiveBehind",),
                    thresholds=red_above(WAL_PUSH_AGE),
                    width=8,
                    height=6,
                ),
                stat(
                    "Missing WAL segments",
                    "WAL segments between the archive's oldest and newest that no file covers. Anything "
                    "above 0 (red) is a hole no restore can pass until a new full backup is taken past it.",
                    "none",
                    q(
                        top("tier, cluster", "tierwatch_backup_wal_archive_missing_segments", *PG),
                        "{{cluster}}",
                    ),
                    alerts=("PostgresWalArchiveGap",),
                    thresholds=RED_AT_1,
                    width=8,
                    height=6,
                ),
                ts(
                    "WAL segments in the archive",
                    "WAL segments in the repository's current archive: it grows with writes and shrinks "
                    "when retention expires old backups and their WAL.",
                    "short",
                    q(
                        top("tier, cluster", "tierwatch_backup_wal_archive_segments", *PG),
                        "{{cluster}}",
                    ),
                    width=8,
                    height=6,
                ),
            ),
        ),
        Row(
            "Restore tests",
            (
                stat(
                    "Last restore test",
                    "The result of the newest run of tierwatch restore-test for each backup set: the "
                    "backup was restored into scratch space and verified (PASSED), or not (FAILED).",
                    "none",
                    q(
                        newest_run(
                            "tierwatch_restore_test_success",
                            "tierwatch_restore_test_last_run_timestamp_seconds",
                            *RESTORE,
                        ),
                        SET_LEGEND,
                    ),
                    alerts=("RestoreTestFailed",),
                    mappings=PASS_FAIL,
                    thresholds=((None, "red"), (1.0, "green")),
                    width=5,
                    height=6,
                ),
                stat(
                    "Since the last successful restore test",
                    "Time since each backup set last passed a restore test (never counts from 1970; "
                    f"RestoreTestStale, red from {human(threshold('restore_test_age_seconds'))}).",
                    "s",
                    q(
                        age("tierwatch_restore_test_last_success_timestamp_seconds", SET, *RESTORE),
                        SET_LEGEND,
                    ),
                    alerts=("RestoreTestStale",),
                    thresholds=red_above("restore_test_age_seconds"),
                    width=5,
                    height=6,
                ),
                stat(
                    "Since the last restore test run",
                    "Time since a restore test of each backup set last ran, whatever its result.",
                    "s",
                    q(age("tierwatch_restore_test_last_run_timestamp_seconds", SET, *RESTORE), SET_LEGEND),
                    thresholds=INFORMATIONAL,
                    width=5,
                    height=6,
                ),
                stat(
                    "Restored data",
                    "How much data the newest successful restore test of each set restored.",
                    "bytes",
                    q(
                        newest_run(
                            "tierwatch_restore_test_restored_bytes",
                            "tierwatch_restore_test_last_success_timestamp_seconds",
                            *RESTORE,
                        ),
                        SET_LEGEND,
                    ),
                    thresholds=INFORMATIONAL,
                    width=4,
                    height=6,
                ),
                stat(
                    "Heartbeat written",
                    "On the primary (master) of each cluster with backup.heartbeat_table "
                    "(heartbeat_key): whether the exporter's last probe wrote the heartbeat. Restore tests "
                    "measure the RPO from the restored heartbeat; without it, from the last commit.",
                    "none",
                    q(sel("tierwatch_backup_heartbeat_write_success", EXPORTER, T), "{{cluster}} {{target}}"),
                    mappings=(("1", "WRITTEN", "green"), ("0", "NOT WRITTEN", "red")),
                    thresholds=((None, "red"), (1.0, "green")),
                    width=5,
                    height=6,
                ),
                objective_panel(
                    "Recovery point (RPO)",
                    "How much data a restore would lose: restore start minus the newest restored commit "
                    "(or heartbeat),",
                    "tierwatch_restore_test_rpo_seconds",
                    "restore_rpo_objective_seconds",
                    "RestoreTestRpoBreached",
                ),
                objective_panel(
                    "Recovery time (RTO)",
                    "How long a restore takes: from its start to the restored copy verified,",
                    "tierwatch_restore_test_rto_seconds",
                    "restore_rto_objective_seconds",
                    "RestoreTestRtoBreached",
                ),
            ),
        ),
        Row(
            "Redis snapshots",
            (
                stat(
                    "Last snapshot",
                    "The result of the newest run of tierwatch redis-snapshot for each Redis backup set "
                    "(BGSAVE on the master, then an atomic copy of its RDB file).",
                    "none",
                    q(
                        newest_run(
                            "tierwatch_redis_backup_success",
                            "tierwatch_redis_backup_last_run_timestamp_seconds",
                            *REDIS,
                        ),
                        SET_LEGEND,
                    ),
                    alerts=("RedisBackupFailed",),
                    mappings=(("1", "OK", "green"), ("0", "FAILED", "red")),
                    thresholds=((None, "red"), (1.0, "green")),
                    width=6,
                    height=6,
                ),
                stat(
                    "Since the last successful snapshot",
                    "Time since each Redis backup set last kept a snapshot (never counts from 1970; "
                    f"RedisBackupStale, red from {human(threshold('redis_backup_age_seconds'))}).",
                    "s",
                    q(age("tierwatch_redis_backup_last_success_timestamp_seconds", SET, *REDIS), SET_LEGEND),
                    alerts=("RedisBackupStale",),
                    thresholds=red_above("redis_backup_age_seconds"),
                    width=6,
                    height=6,
                ),
                ts(
                    "Snapshot size",
                    "Size of the newest snapshot (RDB file) kept of each Redis backup set.",
                    "bytes",
                    q(
                        newest_run(
                            "tierwatch_redis_backup_size_bytes",
                            "tierwatch_redis_backup_last_success_timestamp_seconds",
                            *REDIS,
                        ),
                        SET_LEGEND,
                    ),
                    width=6,
                    height=6,
                ),
                ts(
                    "Snapshot duration",
                    "How long the newest snapshot of each Redis backup set took (BGSAVE and copy).",
                    "s",
                    q(
                        newest_run(
                            "tierwatch_redis_backup_duration_seconds",
                            "tierwatch_redis_backup_last_success_timestamp_seconds",
                            *REDIS,
                        ),
                        SET_LEGEND,
                    ),
                    width=6,
                    height=6,
                ),
            ),
        ),
    ),
)
