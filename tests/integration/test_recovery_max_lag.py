"""A promotion refused because every replica is too far behind is counted where operators look:
``tierwatch_recovery_blocked_total{limit="max_lag"}`` and a refused outcome. Real PostgreSQL (replay
paused on both replicas, more WAL than the default ``max_lag_bytes`` of 16 MiB received but not
replayed), the real ``tierwatch recover`` process with its default limits."""

from __future__ import annotations

import httpx

from tierwatch_lab.stack import Stack

from action_fixtures import ADMIN_ROLE, received, start_pg_cluster
from helpers import metric_value
from recovery_fixtures import alert, payload, start_recovery

LABELS = {"cluster": "main-db", "tier": "postgres", "target": "pg-1", "action": "pg_promote"}


def test_a_promotion_refused_by_max_lag_is_counted_as_blocked(stack: Stack) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
    primary = pg.servers["pg-1"]
    replicas = [pg.servers[name] for name in ("pg-2", "pg-3")]
    for replica in replicas:
        replica.sql("SELECT pg_wal_replay_pause()")
    primary.sql("CREATE TABLE filler (pad text)")
    # 20,000 rows of 1,280 bytes (under the TOAST threshold, so not compressed): over 24 MiB of WAL
    primary.sql("INSERT INTO filler SELECT repeat(md5(i::text), 40) FROM generate_series(1, 20000) i")
    position = str(primary.scalar("SELECT pg_current_wal_lsn()::text"))
    for replica in replicas:
        received(replica, position)
    primary.process.kill()

    recovery = {
        "allow": {"PostgresPrimaryDown": "pg_promote"},
        "clusters": {
            "main-db": {"admin_user": ADMIN_ROLE, "admin_password_file": str(pg.admin_password_file)}
        },
    }
    service = start_recovery(stack, [pg.cluster_entry("main-db")], recovery)
    assert service.post(payload(alert("PostgresPrimaryDown", LABELS))).status_code == 200
    outcome = service.wait_outcome(1, timeout=60)[0]
    assert outcome["outcome"] == "refused", (outcome, service.log.read_text()[-3000:])
    assert "max_lag" in outcome["detail"], outcome

    metrics = httpx.get(service.url + "/metrics", timeout=10).text
    blocked = {"cluster": "main-db", "action": "pg_promote"}
    assert metric_value(metrics, "tierwatch_recovery_blocked_total", **blocked, limit="max_lag") == 1
    for other in ("rate_limit", "cooldown", "not_allowed"):
        assert metric_value(metrics, "tierwatch_recovery_blocked_total", **blocked, limit=other) == 0, other
    refused = metric_value(
        metrics, "tierwatch_recovery_actions_total", **blocked, tier="postgres", outcome="refused"
    )
    assert refused == 1
    assert all(replica.in_recovery() for replica in replicas)  # nothing promoted
    service.stop()
