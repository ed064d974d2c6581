"""PgPromote against real PostgreSQL servers: a primary with replicas in its region and a DR replica;
the primary's postmaster (and its children) killed with SIGKILL; an HAProxy write backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.recovery.actions.base import Outcome
from tierwatch.recovery.actions.pg_promote import CHECK_TABLE, PgPromote
from tierwatch.recovery.discovery import backend_primary
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import HAProxy
from tierwatch_lab.stack.postgres import PgServer

from action_fixtures import (
    ADMIN_ROLE,
    PgActionCluster,
    lb_cluster,
    make_context,
    received,
    start_pg_cluster,
    start_tcp_lb,
)

CLUSTER = "main-db"
BACKEND = "be_pg_write"
ALERT = {"alertname": "PostgresPrimaryDown", "target": "pg-1"}


@pytest.fixture(scope="module")
def pg_main() -> Iterator[PgActionCluster]:
    """A primary, two replicas and a DR replica, for the tests that change nothing."""
    with Stack() as stack:
        yield start_pg_cluster(stack, ("pg-2", "pg-3", "pg-dr"))


def load(
    make_config: Callable[..., LoadedConfig], pg: PgActionCluster, lb: HAProxy | None = None
) -> LoadedConfig:
    return make_config([pg.cluster_entry(CLUSTER)] + ([lb_cluster(lb)] if lb else []))


def settings(pg: PgActionCluster, **extra: Any) -> ClusterRecovery:
    return ClusterRecovery(admin_user=ADMIN_ROLE, admin_password_file=str(pg.admin_password_file), **extra)


def run(ctx: Any) -> Outcome:
    return asyncio.run(PgPromote().run(ctx))


def write_rows(server: PgServer, rows: int) -> str:
    """Insert ``rows`` rows of ~100 bytes; the primary's WAL position afterwards."""
    server.sql("CREATE TABLE IF NOT EXISTS filler (id serial PRIMARY KEY, pad text)")
    server.sql("INSERT INTO filler (pad) SELECT repeat('x', 100) FROM generate_series(1, %s)", (rows,))
    return str(server.scalar("SELECT pg_current_wal_lsn()::text"))


def streams_from(primary: PgServer, replica: PgServer, timeout: float = 30) -> None:
    wait_for(
        lambda: primary.scalar(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
            (replica.name,),
        ),
        timeout,
        f"{replica.name} to stream from {primary.name}",
    )


def test_refuses_while_the_primary_answers(
    pg_main: PgActionCluster, make_config: Callable[..., LoadedConfig]
) -> None:
    loaded = load(make_config, pg_main)
    for labels in (ALERT, {"alertname": "PostgresPrimaryDown"}, {"target": "pg-2"}):
        ctx, recorder = make_context(loaded, CLUSTER, labels, settings=settings(pg_main))
        outcome = run(ctx)
        assert outcome.status == "refused", (labels, outcome, recorder.text())
        assert "still answers" in outcome.detail
        assert recorder.named("refused") and recorder.point_of_no_return_calls == 0
    assert run(make_context(loaded, CLUSTER, ALERT, settings=settings(pg_main))[0]).detail == (
        "primary pg-1 still answers"
    )
    assert not pg_main.servers["pg-1"].in_recovery()
    for name in ("pg-2", "pg-3", "pg-dr"):
        assert pg_main.servers[name].in_recovery()


@pytest.mark.slow
def test_promotes_the_replica_with_most_replayed_wal_and_repoints_the_others(
    make_config: Callable[..., LoadedConfig], stack: Stack
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3", "pg-dr"))
    old, best, lagging, dr = (pg.servers[n] for n in ("pg-1", "pg-2", "pg-3", "pg-dr"))
    lb = start_tcp_lb(stack, "lb-1", BACKEND, [(n, s.port) for n, s in pg.servers.items()])
    loaded = load(make_config, pg, lb)
    lagging.sql("SELECT pg_wal_replay_pause()")
    position = write_rows(old, 20000)
    for replica in (best, lagging, dr):
        received(replica, position)
    best.wait_caught_up()
    dr.wait_caught_up()
    killed_at = time.monotonic()
    old.process.kill()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings(pg, write_backend=BACKEND))
    outcome = run(ctx)
    done_at = time.monotonic()

    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.failover
    assert outcome.facts["new_primary"] == "pg-2" and outcome.facts["old_primary"] == "pg-1"
    assert outcome.facts["old_primary_fencing"] == "required"
    assert recorder.point_of_no_return_calls == 1
    candidates = {e["target"]: e for e in recorder.named("candidate")}
    assert (
        candidates["pg-3"]["eligible"] == "ok" and candidates["pg-3"]["replay"] < candidates["pg-2"]["replay"]
    )
    assert candidates["pg-dr"]["eligible"].startswith("region dr")
    assert {e["target"] for e in recorder.named("repointed")} == {"pg-3", "pg-dr"}
    assert recorder.named("replay_paused")[0]["target"] == "pg-3"
    assert outcome.facts["replay_paused"] == ["pg-3"]  # re-pointed, follows once replay resumes
    assert not best.in_recovery()
    assert best.scalar(f"SELECT count(*) FROM {CHECK_TABLE}") == 1
    # the DR replica streams from the new primary; the paused one follows once replay resumes
    streams_from(best, dr)
    lagging.sql("SELECT pg_wal_replay_resume()")
    streams_from(best, lagging)
    best.sql("CREATE TABLE after_failover (id int)")
    for replica in (lagging, dr):
        wait_for(
            lambda r=replica: r.scalar("SELECT to_regclass('after_failover') IS NOT NULL"), 30, "replicated"
        )
        assert replica.scalar("SELECT count(*) FROM filler") == 20000
    assert asyncio.run(backend_primary(loaded, BACKEND)) == {"lb-1": ["pg-2"]}
    secret = pg.admin_password_file.read_text().strip()
    assert secret not in recorder.text() and secret not in repr(outcome)
    write_at = recorder.named("write_checked")[0]["at"]
    promoted = recorder.named("promoted")[0]["seconds"]
    print(
        f"\n[pg] kill -> write on the promoted replica: {write_at - killed_at:.3f}s "
        f"(pg_promote took {promoted:.3f}s); whole action incl. verify {done_at - killed_at:.3f}s"
    )

    # a resumed run (restart past the point of no return) verifies and re-applies, never promotes again
    ctx, recorder = make_context(
        loaded, CLUSTER, ALERT, settings=settings(pg, write_backend=BACKEND), resumed=True
    )
    outcome = run(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "pg-2" and "promoted" not in [e["event"] for e in recorder.events]
    assert recorder.named("repointed") == []


def test_only_a_regional_failover_promotes_the_dr_replica(
    make_config: Callable[..., LoadedConfig], stack: Stack
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-dr"))
    primary, local, dr = (pg.servers[n] for n in ("pg-1", "pg-2", "pg-dr"))
    loaded = load(make_config, pg)
    write_rows(primary, 100)
    dr.wait_caught_up()
    primary.process.kill()
    local.process.kill()  # the whole main region is gone

    # not regional (whatever the alert's labels say: the service decides and passes ``regional``)
    labels = {**ALERT, "action": "regional_failover"}
    ctx, recorder = make_context(loaded, CLUSTER, labels, settings=settings(pg))
    outcome = run(ctx)
    assert (
        outcome.status == "refused"
        and outcome.detail == "no reachable replica in region main eligible for promotion"
    ), (outcome, recorder.text())
    assert recorder.named("candidate")[0]["eligible"] == "region dr (needs a regional failover)"
    assert dr.in_recovery()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings(pg), dry_run=True, regional=True)
    outcome = run(ctx)
    assert outcome.status == "succeeded" and outcome.detail == "dry run: would promote pg-dr"
    assert recorder.point_of_no_return_calls == 0 and dr.in_recovery()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings(pg), regional=True)
    outcome = run(ctx)
    assert outcome.status == "succeeded", (outcome, recorder.text())
    assert outcome.facts["new_primary"] == "pg-dr"
    assert not dr.in_recovery()
    dr.sql("CREATE TABLE written_in_dr (id int)")


def test_refuses_when_every_candidate_is_beyond_max_lag(
    make_config: Callable[..., LoadedConfig], stack: Stack
) -> None:
    pg = start_pg_cluster(stack, ("pg-2", "pg-3"))
    primary, a, b = (pg.servers[n] for n in ("pg-1", "pg-2", "pg-3"))
    loaded = load(make_config, pg)
    for replica in (a, b):
        replica.sql("SELECT pg_wal_replay_pause()")
    position = write_rows(primary, 5000)  # ~1 MB of WAL, received but not replayed
    for replica in (a, b):
        received(replica, position)
    primary.process.kill()

    ctx, recorder = make_context(loaded, CLUSTER, ALERT, settings=settings(pg, max_lag_bytes=65536))
    outcome = run(ctx)

    assert outcome.status == "refused" and "max_lag" in outcome.detail, (outcome, recorder.text())
    assert outcome.facts == {"limit": "max_lag"}  # the service counts it as blocked by max_lag
    assert all(e["eligible"].startswith("max_lag") for e in recorder.named("candidate"))
    assert recorder.point_of_no_return_calls == 0
    assert a.in_recovery() and b.in_recovery()
