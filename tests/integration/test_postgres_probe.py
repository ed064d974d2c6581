"""PostgresProbe against real servers: a primary, two replicas and a DR replica (module scope), plus
small throwaway clusters for destructive tests (promotion, frozen server)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import time

import psycopg
import pytest

from tierwatch.config import ClusterConfig, Secret, TargetConfig
from tierwatch.probes import probe_class
from tierwatch.probes.base import Observation, ProbeFailure, TargetInfo, classify_failure
from tierwatch.probes.postgres import PostgresProbe, build_query, classify_pg_error
from tierwatch_lab.stack.ports import free_port

from pg_fixtures import PgCluster, pg_cluster, pg_pair, pg_single, probe_until, value

__all__ = ["pg_cluster", "pg_pair", "pg_single"]  # fixtures, imported for pytest

REPLICAS = ("pg-2", "pg-3", "pg-dr")


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def probe_once(cluster: PgCluster, name: str, **kwargs: object) -> Observation:
    probe = cluster.probe(name, **kwargs)
    try:
        return await probe.probe()
    finally:
        await probe.close()


def open_fds() -> set[str]:
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


def monitor_backends(server) -> int:  # type: ignore[no-untyped-def]
    return int(server.scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = 'tierwatch'"))


def test_probe_is_registered_for_the_postgres_tier() -> None:
    assert probe_class("postgres") is PostgresProbe


def test_monitor_role_is_least_privilege(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    rolsuper, monitor_member = primary.sql(
        "SELECT rolsuper, pg_has_role('tierwatch', 'pg_monitor', 'MEMBER') FROM pg_roles"
        " WHERE rolname = 'tierwatch'"
    )[0]
    assert (rolsuper, monitor_member) == (False, True)
    obs = run(probe_once(pg_cluster, "pg-2"))
    assert value(obs, "tierwatch_pg_wal_receiver_up") == 1  # needs pg_read_all_stats to be visible
    # the witness figure: the sender's messages reach it (an idle sender sends keepalives)
    silence = value(obs, "tierwatch_pg_wal_receiver_last_message_age_seconds")
    assert silence is not None and 0 <= silence < 120


def test_primary_sees_every_standby(pg_cluster: PgCluster) -> None:
    obs = run(probe_once(pg_cluster, "pg-1"))
    assert obs.role == "primary"
    assert value(obs, "tierwatch_pg_server_version_num") >= 130000
    assert value(obs, "tierwatch_pg_timeline") == 1
    assert value(obs, "tierwatch_pg_wal_archiving_enabled") == 1
    assert value(obs, "tierwatch_pg_connections_limit") == 40 - 3
    for name in REPLICAS:
        assert value(obs, "tierwatch_pg_standby_connected", name) == 1
        assert value(obs, "tierwatch_pg_standby_state", name, "streaming") == 1
        assert value(obs, "tierwatch_pg_standby_state", name, "catchup") == 0
        assert value(obs, "tierwatch_pg_standby_sync_state", name, "async") == 1
        assert value(obs, "tierwatch_pg_standby_lag_bytes", name, "sent") is not None
    # a primary does not report replica-only series, nor the core lag (owned by the replicas)
    assert value(obs, "tierwatch_replication_lag_bytes") is None
    assert value(obs, "tierwatch_pg_wal_receiver_last_message_age_seconds") is None
    assert value(obs, "tierwatch_pg_wal_receiver_up") is None
    assert obs.peer_samples == {}


def test_replicas_report_their_own_state(pg_cluster: PgCluster) -> None:
    for name in REPLICAS:
        obs = run(probe_once(pg_cluster, name))
        assert obs.role == "replica", name
        assert value(obs, "tierwatch_pg_wal_receiver_up") == 1
        assert value(obs, "tierwatch_pg_replay_paused") == 0
        assert value(obs, "tierwatch_pg_timeline") == 1
        assert value(obs, "tierwatch_replication_lag_bytes") is not None
        assert value(obs, "tierwatch_pg_recovery_conflicts_total", "snapshot") == 0
        assert value(obs, "tierwatch_pg_standby_connected", "pg-1") is None  # no peers listed on a replica


def test_steady_state_reuses_one_connection(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]

    async def main() -> set[tuple[int, object]]:
        probe = pg_cluster.probe("pg-1")
        seen: set[tuple[int, object]] = set()
        try:
            for _ in range(5):
                await probe.probe()
                seen.update(
                    primary.sql(
                        "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = 'tierwatch'"
                    )
                )
        finally:
            await probe.close()
        return seen

    assert len(run(main())) == 1


def test_replay_lag_rises_while_replay_is_paused_and_returns_to_zero(pg_cluster: PgCluster) -> None:
    primary, replica = pg_cluster.servers["pg-1"], pg_cluster.servers["pg-3"]
    primary.sql("CREATE TABLE IF NOT EXISTS lag_load (id serial, payload text)")
    replica.wait_caught_up()

    def write() -> None:
        primary.sql("INSERT INTO lag_load (payload) SELECT repeat('x', 200) FROM generate_series(1, 200)")

    def behind(obs: Observation) -> bool:
        return (
            value(obs, "tierwatch_replication_lag_bytes") > 0
            and value(obs, "tierwatch_replication_lag_seconds") > 0
            and value(obs, "tierwatch_pg_replica_replay_backlog_bytes") > 0
            and value(obs, "tierwatch_pg_replay_paused") == 1
        )

    def caught_up(obs: Observation) -> bool:
        return (
            value(obs, "tierwatch_replication_lag_bytes") == 0
            and value(obs, "tierwatch_replication_lag_seconds") == 0
            and value(obs, "tierwatch_pg_replay_paused") == 0
        )

    async def main() -> None:
        probe, primary_probe = pg_cluster.probe("pg-3"), pg_cluster.probe("pg-1")
        try:
            await probe_until(probe, caught_up, 15, "pg-3 to start caught up")
            replica.sql("SELECT pg_wal_replay_pause()")
            lagging = await probe_until(probe, behind, 15, "pg-3 to fall behind", between=write)
            seconds = value(lagging, "tierwatch_replication_lag_seconds")
            more = await probe_until(
                probe,
                lambda o: value(o, "tierwatch_replication_lag_seconds") > seconds,
                15,
                "pg-3 lag seconds to grow while paused",
                between=write,
            )
            assert value(more, "tierwatch_replication_lag_bytes") > 0
            await probe_until(
                primary_probe,
                lambda o: value(o, "tierwatch_pg_standby_lag_bytes", "pg-3", "replay") > 0,
                15,
                "the primary to see pg-3 behind",
            )
            replica.sql("SELECT pg_wal_replay_resume()")
            await probe_until(probe, caught_up, 15, "pg-3 to catch up after resume")
            await probe_until(
                primary_probe,
                lambda o: value(o, "tierwatch_pg_standby_lag_bytes", "pg-3", "replay") == 0,
                15,
                "the primary to see pg-3 caught up",
            )
        finally:
            replica.sql("SELECT pg_wal_replay_resume()")
            await probe.close()
            await primary_probe.close()

    run(main())


def test_idle_primary_shows_no_false_lag(pg_cluster: PgCluster) -> None:
    for name in REPLICAS:
        pg_cluster.servers[name].wait_caught_up()

    async def main() -> int:
        probes = [pg_cluster.probe(name) for name in REPLICAS]
        samples = 0
        try:
            for probe in probes:
                await probe_until(
                    probe, lambda o: value(o, "tierwatch_replication_lag_bytes") == 0, 15, "caught up"
                )
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                for probe in probes:
                    obs = await probe.probe()
                    assert value(obs, "tierwatch_replication_lag_seconds") == 0, probe.info.name
                    assert value(obs, "tierwatch_replication_lag_bytes") == 0, probe.info.name
                    samples += 1
                await asyncio.sleep(0.25)
        finally:
            for probe in probes:
                await probe.close()
        return samples

    assert run(main()) >= 3 * 10


def test_archive_failures_show_in_the_archiver_metrics(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    assert primary.archive is not None
    started = time.time()

    def new_segment() -> None:
        primary.sql("CREATE TABLE IF NOT EXISTS archive_load (x int)")
        primary.sql("INSERT INTO archive_load VALUES (1)")
        primary.sql("SELECT pg_switch_wal()")

    async def main() -> None:
        probe = pg_cluster.probe("pg-1")
        try:
            before = await probe.probe()
            failed_before = value(before, "tierwatch_pg_wal_archive_failures_total")
            archived_before = value(before, "tierwatch_pg_wal_archived_total")
            primary.archive.set_failing(True)
            new_segment()
            failing = await probe_until(
                probe,
                lambda o: (
                    value(o, "tierwatch_pg_wal_archive_failures_total") > failed_before
                    and (value(o, "tierwatch_pg_wal_last_archive_failure_timestamp_seconds") or 0)
                    >= started - 1
                ),
                20,
                "a failed archive attempt",
            )
            assert value(failing, "tierwatch_pg_wal_archived_total") == archived_before
            primary.archive.set_failing(False)
            new_segment()
            recovered = await probe_until(
                probe,
                lambda o: value(o, "tierwatch_pg_wal_archived_total") > archived_before,
                20,
                "archiving to resume",
            )
            assert value(recovered, "tierwatch_pg_wal_last_archived_timestamp_seconds") >= value(
                failing, "tierwatch_pg_wal_last_archive_failure_timestamp_seconds"
            )
        finally:
            primary.archive.set_failing(False)
            await probe.close()

    run(main())


def used_ratio(obs: Observation) -> float:
    used = sum(s.value for s in obs.samples if s.spec.name == "tierwatch_pg_connections")
    return used / value(obs, "tierwatch_pg_connections_limit")


def test_connection_saturation_is_visible(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    before = run(probe_once(pg_cluster, "pg-1"))
    extra = [primary.connect() for _ in range(20)]
    try:
        during = run(probe_once(pg_cluster, "pg-1"))
    finally:
        for conn in extra:
            conn.close()
    limit = value(during, "tierwatch_pg_connections_limit")
    assert used_ratio(during) - used_ratio(before) >= 20 / limit - 1e-9
    assert value(during, "tierwatch_pg_connections", "idle") >= 20


def test_long_and_idle_in_transaction_ages(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    with primary.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT txid_current()")

        async def main() -> Observation:
            probe = pg_cluster.probe("pg-1")
            try:
                return await probe_until(
                    probe,
                    lambda o: value(o, "tierwatch_pg_oldest_idle_in_transaction_age_seconds") >= 1.0,
                    15,
                    "an idle-in-transaction session older than 1 s",
                )
            finally:
                await probe.close()

        obs = run(main())
        holder.execute("ROLLBACK")
    assert value(obs, "tierwatch_pg_oldest_transaction_age_seconds") >= 1.0
    assert value(obs, "tierwatch_pg_connections", "idle_in_transaction") >= 1
    after = run(probe_once(pg_cluster, "pg-1"))
    assert value(after, "tierwatch_pg_oldest_idle_in_transaction_age_seconds") == 0


def test_activity_counters_rise(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    before = run(probe_once(pg_cluster, "pg-1"))
    with primary.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS counters (x int)")
        for _ in range(5):
            with conn.transaction(force_rollback=True):
                conn.execute("INSERT INTO counters VALUES (1)")
    after = run(probe_once(pg_cluster, "pg-1"))
    for name, rise in (
        ("tierwatch_pg_rollbacks_total", 5),
        ("tierwatch_pg_commits_total", 1),
        ("tierwatch_cache_hits_total", 1),
    ):
        assert value(after, name) - value(before, name) >= rise, name
    assert value(after, "tierwatch_cache_misses_total") >= value(before, "tierwatch_cache_misses_total")
    assert value(after, "tierwatch_pg_deadlocks_total") == 0


def test_replication_slots(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    primary.sql("SELECT pg_create_physical_replication_slot('tw_test_slot', true)")
    try:
        primary.sql("CREATE TABLE IF NOT EXISTS slot_load (x int)")
        primary.sql("INSERT INTO slot_load SELECT generate_series(1, 1000)")
        obs = run(probe_once(pg_cluster, "pg-1"))
    finally:
        primary.sql("SELECT pg_drop_replication_slot('tw_test_slot')")
    assert value(obs, "tierwatch_pg_replication_slot_active", "tw_test_slot") == 0
    assert value(obs, "tierwatch_pg_replication_slot_wal_status", "tw_test_slot", "reserved") == 1
    assert value(obs, "tierwatch_pg_replication_slot_wal_status", "tw_test_slot", "lost") == 0
    assert value(obs, "tierwatch_pg_replication_slot_retained_wal_bytes", "tw_test_slot") > 0


def test_query_variants_by_server_version(pg_cluster: PgCluster) -> None:
    assert "reserved_connections')" not in build_query(150000).replace("superuser_reserved_connections')", "")
    assert "current_setting('reserved_connections')" in build_query(160000)
    assert "confl_active_logicalslot" in build_query(170000)
    assert "confl_active_logicalslot" not in build_query(130000)
    # the 13/14 variants are valid on this server (15) and return the same shape
    primary = pg_cluster.servers["pg-1"]
    with primary.connect() as conn:
        columns = set()
        for version in (130000, 140000, conn.info.server_version):
            cur = conn.execute(build_query(version).encode())
            assert cur.fetchone() is not None
            columns.add(tuple(col.name for col in cur.description))
    assert len(columns) == 1


def test_promotion_flips_roles_and_two_primaries_are_visible(pg_pair: PgCluster) -> None:
    replica = pg_pair.servers["pg-2"]

    async def main() -> tuple[Observation, Observation]:
        first, second = pg_pair.probe("pg-1"), pg_pair.probe("pg-2")
        try:
            assert (await first.probe()).role == "primary"
            assert (await second.probe()).role == "replica"
            started = time.monotonic()
            replica.sql("SELECT pg_promote(true, 10)")
            promoted = await probe_until(second, lambda o: o.role == "primary", 10, "pg-2 to be primary")
            assert time.monotonic() - started < 5
            old = await probe_until(
                first,
                lambda o: value(o, "tierwatch_pg_standby_connected", "pg-2") == 0,
                10,
                "pg-1 to lose its standby",
            )
            return old, promoted
        finally:
            await first.close()
            await second.close()

    old, promoted = run(main())
    roles = [old.role, promoted.role]
    assert roles.count("primary") == 2  # split brain, seen from the metrics alone
    assert value(old, "tierwatch_pg_timeline") == 1
    assert value(promoted, "tierwatch_pg_timeline") == 2
    assert value(promoted, "tierwatch_pg_wal_receiver_up") is None
    assert value(promoted, "tierwatch_replication_lag_bytes") is None


def test_frozen_server_times_out_within_the_deadline_without_leaks(pg_single: PgCluster) -> None:
    server = pg_single.servers["pg-1"]
    timeout = 1.0

    async def main() -> None:
        fds_before = open_fds()
        probe = pg_single.probe("pg-1", timeout=timeout)
        await probe.probe()
        server.process.pause()
        try:
            for attempt in ("mid-query on the open connection", "while connecting"):
                started = time.monotonic()
                with pytest.raises(ProbeFailure) as failure:
                    await probe.probe()
                elapsed = time.monotonic() - started
                assert failure.value.reason == "timeout", attempt
                assert elapsed <= timeout + 0.2, (attempt, elapsed)
            await probe.reset()
            assert open_fds() == fds_before
            assert asyncio.all_tasks() == {asyncio.current_task()}
        finally:
            server.process.resume()
        try:
            await probe.probe()
            deadline = time.monotonic() + 10
            while monitor_backends(server) != 1:
                assert time.monotonic() < deadline, "stale tierwatch backends after SIGCONT"
                await asyncio.sleep(0.1)
            for _ in range(3):
                await probe.probe()
                assert monitor_backends(server) == 1
        finally:
            await probe.close()
        assert open_fds() == fds_before

    run(main())


def test_cancelling_a_probe_mid_query_leaks_nothing(pg_single: PgCluster) -> None:
    server = pg_single.servers["pg-1"]

    async def main() -> None:
        fds_before = open_fds()
        probe = pg_single.probe("pg-1", timeout=5.0)
        await probe.probe()
        conn = probe._conn
        assert conn is not None
        server.process.pause()
        try:
            task = asyncio.create_task(probe.probe())
            deadline = time.monotonic() + 5
            while conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
                assert time.monotonic() < deadline, "the probe query never started"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 0.5  # nothing waited on the frozen server
            assert conn.closed
            await probe.reset()
            assert open_fds() == fds_before
            assert asyncio.all_tasks() == {asyncio.current_task()}
        finally:
            server.process.resume()
        try:
            await probe.probe()
            deadline = time.monotonic() + 10
            while monitor_backends(server) != 1:
                assert time.monotonic() < deadline, "stale tierwatch backends after SIGCONT"
                await asyncio.sleep(0.1)
        finally:
            await probe.close()

    run(main())


def test_wrong_password_fails_with_auth_and_no_secret(pg_cluster: PgCluster) -> None:
    wrong = "wrong-Pa55word-7f3e9c"
    right = pg_cluster.servers["pg-1"].monitor_password

    async def main() -> ProbeFailure:
        probe = pg_cluster.probe("pg-1", password=wrong)
        try:
            with pytest.raises(ProbeFailure) as failure:
                await probe.probe()
            return failure.value
        finally:
            await probe.close()

    failure = run(main())
    assert failure.reason == "auth"
    assert classify_failure(failure) == "auth"
    chain: list[BaseException] = []
    current: BaseException | None = failure
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for exc in chain:
        for text in (str(exc), repr(exc), str(exc.args)):
            assert wrong not in text and right not in text


def test_nothing_listening_is_refused() -> None:
    port = free_port()
    cluster = ClusterConfig(
        name="gone",
        tier="postgres",
        targets=[
            TargetConfig(
                name="pg-gone", region="primary", url=f"postgresql://tierwatch@127.0.0.1:{port}/postgres"
            )
        ],
    )
    info = TargetInfo(
        tier="postgres", cluster=cluster, target=cluster.targets[0], password=Secret("x"), timeout=2.0
    )

    async def main() -> ProbeFailure:
        probe = PostgresProbe(info)
        try:
            with pytest.raises(ProbeFailure) as failure:
                await probe.probe()
            return failure.value
        finally:
            await probe.close()

    assert run(main()).reason == "refused"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (psycopg.OperationalError('FATAL:  password authentication failed for user "tierwatch"'), "auth"),
        (psycopg.OperationalError('FATAL:  no pg_hba.conf entry for host "10.0.0.1"'), "auth"),
        (psycopg.OperationalError("connection failed: Connection refused"), "refused"),
        (psycopg.errors.ConnectionTimeout("connection timeout expired"), "timeout"),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), "timeout"),
        (psycopg.OperationalError("server closed the connection unexpectedly"), "error"),
    ],
)
def test_error_classification(error: psycopg.Error, reason: str) -> None:
    assert classify_pg_error(error) == reason


# --- maintenance signals: wraparound, restarts, locks, vacuum (rules/postgres: issue 28) ---------------


def with_top_tables(cluster: PgCluster, name: str, top: int) -> PostgresProbe:
    info = cluster.info(name)
    return PostgresProbe(
        dataclasses.replace(info, cluster=info.cluster.model_copy(update={"top_tables": top}))
    )


async def probe_closed(probe: PostgresProbe) -> Observation:
    try:
        return await probe.probe()
    finally:
        await probe.close()


def test_xid_ages_grow_with_consumed_transaction_ids_on_the_primary_only(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    before = run(probe_once(pg_cluster, "pg-1"))
    database = primary.scalar("SELECT current_database()")
    with primary.connect() as conn:  # autocommit: each COMMIT in the DO block ends one transaction
        conn.execute("DO $$ BEGIN FOR i IN 1..3000 LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$")
    after = run(probe_once(pg_cluster, "pg-1"))
    for db in ("postgres", "template0", "template1"):
        assert value(after, "tierwatch_pg_database_xid_age", db) is not None, db
        assert value(after, "tierwatch_pg_database_mxid_age", db) is not None, db
    grown = value(after, "tierwatch_pg_database_xid_age", database) - value(
        before, "tierwatch_pg_database_xid_age", database
    )
    assert grown >= 3000
    assert value(after, "tierwatch_pg_oldest_table_xid_age", database) >= 3000
    replica = run(probe_once(pg_cluster, "pg-2"))
    assert not [s for s in replica.samples if "xid_age" in s.spec.name or "table_" in s.spec.name]


def test_start_time_and_configuration_reload(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    before = run(probe_once(pg_cluster, "pg-1"))
    started = primary.scalar("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")
    assert value(before, "tierwatch_pg_start_time_seconds") == pytest.approx(started, abs=1e-3)
    time.sleep(0.01)
    primary.sql("SELECT pg_reload_conf()")

    def reloaded(obs: Observation) -> bool:
        return value(obs, "tierwatch_pg_config_load_time_seconds") > value(
            before, "tierwatch_pg_config_load_time_seconds"
        )

    async def main() -> Observation:
        probe = pg_cluster.probe("pg-1")
        try:
            return await probe_until(probe, reloaded, 15, "the configuration reloaded")
        finally:
            await probe.close()

    after = run(main())
    assert value(after, "tierwatch_pg_start_time_seconds") == value(before, "tierwatch_pg_start_time_seconds")


def test_locks_held_against_the_lock_table_size(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    slots = primary.scalar(
        "SELECT current_setting('max_locks_per_transaction')::int * (current_setting('max_connections')::int"
        " + current_setting('max_prepared_transactions')::int)"
    )
    before = run(probe_once(pg_cluster, "pg-1"))
    with primary.connect() as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(i) FROM generate_series(1, 300) i")  # never fast-path
        during = run(probe_once(pg_cluster, "pg-1"))
        holder.execute("ROLLBACK")
    assert value(during, "tierwatch_pg_lock_slots") == slots
    assert value(during, "tierwatch_pg_locks") - value(before, "tierwatch_pg_locks") >= 300


def test_invalid_index_is_counted(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    database = primary.scalar("SELECT current_database()")
    primary.sql("CREATE TABLE twins (x int)")
    primary.sql("INSERT INTO twins VALUES (1), (1)")
    try:
        with pytest.raises(psycopg.errors.UniqueViolation), primary.connect() as conn:
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY twins_x ON twins (x)")  # fails, stays invalid
        obs = run(probe_once(pg_cluster, "pg-1"))
        assert value(obs, "tierwatch_pg_invalid_indexes", database) == 1
    finally:
        primary.sql("DROP TABLE twins")
    assert value(run(probe_once(pg_cluster, "pg-1")), "tierwatch_pg_invalid_indexes", database) == 0


def test_dead_tuples_and_vacuum_of_the_top_tables(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.servers["pg-1"]
    database = primary.scalar("SELECT current_database()")
    for name, rows in (("churn_big", 2000), ("churn_small", 400), ("churn_tiny", 50)):
        primary.sql(f"CREATE TABLE {name} (x int) WITH (autovacuum_enabled = false)")
        primary.sql(f"INSERT INTO {name} SELECT generate_series(1, {rows})")
        primary.sql(f"DELETE FROM {name} WHERE x % 4 <> 0")
    try:

        async def main() -> Observation:
            probe = with_top_tables(pg_cluster, "pg-1", 2)
            try:
                return await probe_until(
                    probe,
                    lambda o: (
                        value(o, "tierwatch_pg_table_dead_tuples", database, "public.churn_small") == 300
                    ),
                    15,
                    "the dead tuples of the two tables counted",
                )
            finally:
                await probe.close()

        obs = run(main())
        tables = {s.labels[1] for s in obs.samples if s.spec.name == "tierwatch_pg_table_dead_tuples"}
        assert tables == {"public.churn_big", "public.churn_small"}  # the top 2 by dead tuples
        assert value(obs, "tierwatch_pg_table_dead_tuples", database, "public.churn_big") == 1500
        assert value(obs, "tierwatch_pg_table_live_tuples", database, "public.churn_big") == 500
        assert (
            value(obs, "tierwatch_pg_table_last_vacuum_timestamp_seconds", database, "public.churn_big") == 0
        )
        primary.sql("VACUUM ANALYZE churn_big")
        vacuumed_at = time.time()

        # with no dead rows left churn_big ranks with every clean table of the database (which the
        # module's other tests created): ask for them all
        async def after_vacuum() -> Observation:
            probe = with_top_tables(pg_cluster, "pg-1", 50)
            try:
                return await probe_until(
                    probe,
                    lambda o: bool(
                        value(
                            o,
                            "tierwatch_pg_table_last_vacuum_timestamp_seconds",
                            database,
                            "public.churn_big",
                        )
                    ),
                    30,
                    "the vacuum counted",
                )
            finally:
                await probe.close()

        obs = run(after_vacuum())
        assert value(obs, "tierwatch_pg_table_dead_tuples", database, "public.churn_big") == 0
        for metric in ("last_vacuum", "last_analyze"):
            at = value(obs, f"tierwatch_pg_table_{metric}_timestamp_seconds", database, "public.churn_big")
            assert abs(at - vacuumed_at) < 30, metric
        none = run(probe_closed(with_top_tables(pg_cluster, "pg-1", 0)))
        assert not [s for s in none.samples if s.spec.name.startswith("tierwatch_pg_table_")]
    finally:
        primary.sql("DROP TABLE churn_big, churn_small, churn_tiny")
