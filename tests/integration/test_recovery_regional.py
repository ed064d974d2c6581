"""The DR path is reachable from an alert: the allow-list entry ``{action: pg_promote, regional: true}``
lets the service pass ``regional`` to the failover; a bare ``pg_promote`` entry never crosses regions,
whatever labels the alert carries. Real PostgreSQL (primary, a local replica, a DR replica), the real
``tierwatch recover`` process, dry run so the servers stay as they are between the two alerts."""

from __future__ import annotations

from tierwatch_lab.stack import Stack

from action_fixtures import ADMIN_ROLE, start_pg_cluster
from recovery_fixtures import alert, payload, start_recovery


def test_only_an_allow_list_entry_marked_regional_reaches_the_dr_replica(stack: Stack) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-dr"))
    pg.servers["pg-dr"].wait_caught_up()
    pg.servers["pg-1"].process.kill()
    pg.servers["pg-2"].process.kill()  # the whole main region is gone
    recovery = {
        "dry_run": True,
        "allow": {
            "PostgresPrimaryDown": "pg_promote",
            "PostgresRegionLost": {"action": "pg_promote", "regional": True},
        },
        "clusters": {
            "main-db": {"admin_user": ADMIN_ROLE, "admin_password_file": str(pg.admin_password_file)}
        },
    }
    service = start_recovery(stack, [pg.cluster_entry("main-db")], recovery)
    labels = {"cluster": "main-db", "tier": "postgres", "target": "pg-1", "action": "pg_promote"}

    # a label cannot make a plain failover regional
    plain = alert("PostgresPrimaryDown", {**labels, "region": "main", "scope": "regional_failover"})
    assert service.post(payload(plain)).status_code == 200
    first = service.wait_outcome(1, timeout=60)[0]
    assert first["outcome"] == "refused", (first["detail"], service.log.read_text()[-3000:])
    assert "no reachable replica in region main" in first["detail"]

    regional = alert("PostgresRegionLost", labels)
    assert service.post(payload(regional)).status_code == 200
    second = service.wait_outcome(2, timeout=60)[1]
    assert second["outcome"] == "dry_run" and second["detail"] == "dry run: would promote pg-dr", second
    assert pg.servers["pg-dr"].in_recovery()
