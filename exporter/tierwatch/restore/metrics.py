"""The batch commands' metrics, declared in the one metric catalogue (docs/metrics.md lists them):
written by ``restore-test`` and ``redis-snapshot`` into node_exporter's textfile directory, one file
per set, with the labels ``tier``, ``cluster`` and ``backup`` (the set's name)."""

from __future__ import annotations

from ..metric_catalog import MetricSpec, metric


def _batch(name: str, help: str) -> MetricSpec:
    return metric(name, "gauge", help, ("backup",), scope="cluster", section="batch")


RESTORE_TEST: tuple[MetricSpec, ...] = (
    _batch("tierwatch_restore_test_last_run_timestamp_seconds", "When the last restore test ended."),
    _batch(
        "tierwatch_restore_test_last_success_timestamp_seconds",
        "When the last successful restore test ended (0 if never).",
    ),
    _batch(
        "tierwatch_restore_test_success", "1 if the last restore test verified the restored copy, else 0."
    ),
    _batch(
        "tierwatch_restore_test_rto_seconds",
        "Restore start to verified (the recovery time), of the last successful restore test.",
    ),
    _batch(
        "tierwatch_restore_test_rpo_seconds",
        "Restore start minus the newest restored write (the heartbeat's time, else the newest replayed "
        "commit, else the backup's end), of the last successful restore test.",
    ),
    _batch(
        "tierwatch_restore_test_restored_bytes",
        "Bytes of the restored copy, of the last successful restore test.",
    ),
)
REDIS_BACKUP: tuple[MetricSpec, ...] = (
    _batch("tierwatch_redis_backup_last_run_timestamp_seconds", "When the last Redis snapshot run ended."),
    _batch(
        "tierwatch_redis_backup_last_success_timestamp_seconds",
        "When the last successful Redis snapshot was kept (0 if never).",
    ),
    _batch("tierwatch_redis_backup_success", "1 if the last Redis snapshot run kept a snapshot, else 0."),
    _batch("tierwatch_redis_backup_size_bytes", "Bytes of the last snapshot kept."),
    _batch(
        "tierwatch_redis_backup_duration_seconds",
        "BGSAVE request to snapshot kept, of the last successful run.",
    ),
)
