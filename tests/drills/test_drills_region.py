"""The region-loss drill (tierwatch_lab.drills_region) against the demo stack with its 5 s detection window:
the whole primary region (app servers, Redis a/b/c, PostgreSQL pg-1/2/3, the primary vantage's
exporter) dies at once; the regional alerts promote, exactly once per engine, the Redis backup
master (its replica kept under it) and the PostgreSQL DR replica. Writes acknowledged region-safe
are never lost; the in-region-only ones lost are the reported RPO of async cross-region replication."""

from __future__ import annotations

import pytest

from tierwatch_lab.drills import run_drill
from tierwatch_lab.drills_region import PG_DR, PgRegionWrites, RedisRegionWrites
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.postgres import create_app_role, start_primary, start_replica
from tierwatch_lab.stack.redis import start_redis

PASSWORD = "region-writes-secret-3e1d"


def test_redis_writes_are_region_safe_only_once_the_failover_region_has_them(stack: Stack) -> None:
    """The checker's classes are real: with the backup master frozen, a write acknowledged by the
    in-region replica alone is in-region only; once it runs again, writes are region-safe."""
    master = start_redis(stack, "redis-a", password=PASSWORD)
    start_redis(stack, "redis-b", password=PASSWORD, replica_of=master)
    backup = start_redis(stack, "redis-d", password=PASSWORD, replica_of=master)
    writes = RedisRegionWrites(master.port, PASSWORD, "t", {backup.port})
    numbers = iter(range(1, 1000))
    # right after their full sync the replicas take up to a second to acknowledge
    wait_for(lambda: writes(next(numbers)) and bool(writes.region_safe), 15, "a region-safe write")
    safe, in_region = len(writes.region_safe), len(writes.in_region)
    backup.process.pause()
    try:
        assert writes(1000)  # WAIT is met by redis-b alone: acknowledged
        assert writes.in_region[in_region:] == ["t:1000"] and len(writes.region_safe) == safe
    finally:
        backup.process.resume()
    wait_for(lambda: writes(next(numbers)) and len(writes.region_safe) > safe, 15, "region-safe again")


def test_pg_writes_are_region_safe_only_once_the_dr_replica_flushed_them(stack: Stack) -> None:
    primary = start_primary(stack, "pg-1")
    password = create_app_role(primary, "app")
    dr = start_replica(stack, primary, PG_DR)
    primary.sql("CREATE TABLE t (id bigint PRIMARY KEY)")
    primary.sql("GRANT INSERT, SELECT ON t TO app")
    primary.sql("GRANT pg_read_all_stats TO app")
    writes = PgRegionWrites(primary.port, password, "t", dr.port)
    assert writes(1) and writes.region_safe == [1]
    dr.process.pause()
    try:
        assert writes(2)  # no synchronous standby here: the commit is acknowledged locally
        assert writes.in_region == [2] and writes.region_safe == [1]
    finally:
        dr.process.resume()
    assert writes(3) and writes.region_safe == [1, 3]


@pytest.mark.slow
def test_region_loss_promotes_in_the_failover_region_once_and_loses_no_region_safe_write(
    stack: Stack,
) -> None:
    result = run_drill("region-loss", stack=stack, timeout=120)
    report = result.render()
    print("\n" + report + f"\n  checker: {result.faults}")
    assert result.recovered, report
    assert result.primaries == {"redis": 1, "postgres": 1}, report
    redis_check, pg_check = result.faults["redis"], result.faults["postgres"]
    assert redis_check["extra"]["promoted"] == ["redis-d"], report
    assert redis_check["extra"]["by_alert"] == ["RedisPrimaryRegionDown"], report
    assert redis_check["extra"]["cascade_kept"], report  # redis-e still follows redis-d
    assert pg_check["extra"]["promoted"] == ["pg-dr"], report
    assert pg_check["extra"]["by_alert"] == ["PostgresPrimaryRegionDown"], report
    # the records name the new primaries and the failover region; clients by name write again
    for cluster, record in result.faults.pop("dns").items():
        assert record["names"] == record["expected"], (cluster, report)
    for check in (redis_check, pg_check):
        assert check["extra"]["dns_s"] is not None and check["extra"]["writes_by_name_s"] is not None, report
    restore = result.faults.pop("restore")  # from the failover region's pgBackRest repository
    assert restore["exit"] == 0 and restore["success"] == 1, report
    # archive_timeout 60 s: the archive is at most a minute (and a segment switch) behind the failure
    assert 0 < restore["rto_seconds"] < 60 and restore["rpo_at_failure_seconds"] < 90, report
    for engine, check in result.faults.items():
        extra = check["extra"]
        assert extra["promotions"] == 1, (engine, report)
        assert extra["region_safe_acked"] > 20, (engine, report)
        assert check["acked_lost"] == 0, (engine, report)  # region-safe acknowledged writes lost
        assert check["double_primary_s"] == 0, (engine, report)
        assert extra["detection_s"] is not None and extra["writes_again_s"] is not None, (engine, report)
        assert extra["detection_s"] < extra["promotion_s"] < 60, (engine, report)
