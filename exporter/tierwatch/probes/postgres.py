"""PostgreSQL probe: role, replication (both ends), slots, archiving, connections, activity counters.

One persistent autocommit connection per target (psycopg 3 async), one query per probe returning a
single row (standbys and slots as JSON arrays). Works with a role that only has ``pg_monitor``.
What is measured and the lag semantics are documented in docs/tiers/postgres.md. With
``backup.heartbeat_table``, a probe that finds the primary then upserts the heartbeat row on the
same connection (one more statement, within the same deadline); a heartbeat that cannot be written
is reported by its own gauge and never fails the probe. A target that a Patroni member manages
(``patroni:`` on the cluster) also gets Patroni's view of it, read concurrently (probes/patroni.py);
the latency recorded stays the PostgreSQL exchange's own.

Cancellation: psycopg answers a cancelled query by sending a cancel request and waiting up to 10 s
for the server, which a frozen server never answers. So the query runs in its own task, and on the
deadline (or any cancellation of ``probe``) the probe shuts the socket down first, which ends that
task at once with a connection error, then closes the connection: nothing waits on the server.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg
from psycopg import sql

from ..clients.pg_reply import ReplyGuard
from ..clients.postgres import abort, classify_pg_error
from ..metric_catalog import (
    BACKUP_HEARTBEAT_WRITE,
    CACHE_HITS,
    CACHE_MISSES,
    REPLICATION_LAG_BYTES,
    REPLICATION_LAG_SECONDS,
    metric,
)
from .base import Observation, Probe, ProbeFailure, TargetInfo, remaining
from .patroni import PatroniReader, member_for
from .pg_backup import observe_base_backup

APPLICATION_NAME = "tierwatch"
# Shares of the time left until the probe's deadline (its budget, at the probe's start): our own
# timeout ends at 95 % of it, so the probe classifies and cleans up before the caller cancels it at
# the deadline; the server-side statement_timeout is 80 % of it, shorter still, and libpq's
# connect_timeout is the budget in whole seconds (at least 2: libpq's own minimum).
OWN_DEADLINE_SHARE = 0.95
STATEMENT_TIMEOUT_SHARE = 0.8
# Reply size: the query returns one row by construction; its only lists (standbys, slots) are cut at
# MAX_ROWS in SQL, activity is aggregated by state, names are at most NAMEDATALEN: a real server's
# reply stays a few KB however busy it is. A fake server's huge reply is cut by ReplyGuard (pg_reply.py).
MAX_ROWS = 100  # standbys and slots reported per server (label cardinality bound)

CONNECTION_STATES: dict[str, str] = {
    "active": "active",
    "idle": "idle",
    "idle in transaction": "idle_in_transaction",
    "idle in transaction (aborted)": "idle_in_transaction_aborted",
    "fastpath function call": "fastpath",
    "disabled": "disabled",
}
STANDBY_STATES: tuple[str, ...] = ("startup", "catchup", "streaming", "backup", "stopping")
SYNC_STATES: tuple[str, ...] = ("async", "potential", "sync", "quorum")
WAL_STATUSES: tuple[str, ...] = ("reserved", "extended", "unreserved", "lost")
CONFLICT_KINDS: tuple[str, ...] = ("tablespace", "lock", "snapshot", "bufferpin", "deadlock", "logicalslot")

S = "postgres"
SERVER_VERSION = metric(
    "tierwatch_pg_server_version_num", "gauge", "server_version_num of the server (e.g. 150004).", section=S
)
TIMELINE = metric(
    "tierwatch_pg_timeline",
    "gauge",
    "Timeline the server writes (primary) or receives/replays (replica); differs between two primaries "
    "that split from one history.",
    section=S,
)
STANDBY_CONNECTED = metric(
    "tierwatch_pg_standby_connected",
    "gauge",
    "WAL senders for a standby (by application_name); 0 for a configured peer target that is not connected.",
    ("standby",),
    section=S,
)
STANDBY_STATE = metric(
    "tierwatch_pg_standby_state",
    "gauge",
    "Standbys by application_name in each WAL sender state (startup, catchup, streaming, backup, stopping).",
    ("standby", "state"),
    section=S,
)
STANDBY_SYNC_STATE = metric(
    "tierwatch_pg_standby_sync_state",
    "gauge",
    "Standbys by application_name in each sync state (async, potential, sync, quorum).",
    ("standby", "sync_state"),
    section=S,
)
STANDBY_LAG_BYTES = metric(
    "tierwatch_pg_standby_lag_bytes",
    "gauge",
    "As the sending server sees it: bytes between its current WAL position and what the standby has "
    "reached at each stage (sent, write, flush, replay).",
    ("standby", "stage"),
    section=S,
)
STANDBY_LAG_SECONDS = metric(
    "tierwatch_pg_standby_lag_seconds",
    "gauge",
    "As the sending server sees it: write_lag, flush_lag, replay_lag of pg_stat_replication "
    "(0 once caught up and idle).",
    ("standby", "stage"),
    section=S,
)
SLOT_ACTIVE = metric(
    "tierwatch_pg_replication_slot_active",
    "gauge",
    "1 if a client uses the replication slot.",
    ("slot",),
    section=S,
)
SLOT_RETAINED = metric(
    "tierwatch_pg_replication_slot_retained_wal_bytes",
    "gauge",
    "WAL bytes the replication slot keeps from being removed (current position minus restart_lsn).",
    ("slot",),
    section=S,
)
SLOT_WAL_STATUS = metric(
    "tierwatch_pg_replication_slot_wal_status",
    "gauge",
    "1 for the slot's current wal_status (reserved, extended, unreserved, lost).",
    ("slot", "wal_status"),
    section=S,
)
REPLAY_BACKLOG = metric(
    "tierwatch_pg_replica_replay_backlog_bytes",
    "gauge",
    "On a replica: WAL bytes received but not yet replayed.",
    section=S,
)
WAL_RECEIVER_UP = metric(
    "tierwatch_pg_wal_receiver_up", "gauge", "On a replica: 1 if its WAL receiver is streaming.", section=S
)
WAL_RECEIVER_SILENCE = metric(
    "tierwatch_pg_wal_receiver_last_message_age_seconds",
    "gauge",
    "On a replica: seconds since its WAL receiver last got a message from its sender "
    "(pg_stat_wal_receiver.last_msg_receipt_time); a witness that the primary is alive.",
    section=S,
)
REPLAY_PAUSED = metric(
    "tierwatch_pg_replay_paused",
    "gauge",
    "On a replica: 1 if WAL replay is paused (or a pause is requested).",
    section=S,
)
CONFLICTS = metric(
    "tierwatch_pg_recovery_conflicts_total",
    "counter",
    "Queries cancelled on a replica by recovery conflicts, by kind, summed over databases.",
    ("kind",),
    section=S,
)
ARCHIVING_ENABLED = metric(
    "tierwatch_pg_wal_archiving_enabled", "gauge", "1 if archive_mode is on or always.", section=S
)
ARCHIVED = metric(
    "tierwatch_pg_wal_archived_total",
    "counter",
    "WAL files archived successfully (pg_stat_archiver).",
    section=S,
)
ARCHIVE_FAILURES = metric(
    "tierwatch_pg_wal_archive_failures_total",
    "counter",
    "Failed attempts to archive a WAL file (pg_stat_archiver).",
    section=S,
)
LAST_ARCHIVED = metric(
    "tierwatch_pg_wal_last_archived_timestamp_seconds",
    "gauge",
    "Unix time of the last successful WAL archive (absent if none since the stats were reset).",
    section=S,
)
LAST_ARCHIVE_FAILURE = metric(
    "tierwatch_pg_wal_last_archive_failure_timestamp_seconds",
    "gauge",
    "Unix time of the last failed WAL archive attempt (absent if none since the stats were reset).",
    section=S,
)
CONNECTIONS = metric(
    "tierwatch_pg_connections",
    "gauge",
    "Client backends by state (active, idle, idle_in_transaction, idle_in_transaction_aborted, fastpath, "
    "disabled).",
    ("state",),
    section=S,
)
CONNECTIONS_LIMIT = metric(
    "tierwatch_pg_connections_limit",
    "gauge",
    "Connections open to ordinary roles: max_connections minus superuser_reserved_connections "
    "(and reserved_connections on 16+).",
    section=S,
)
OLDEST_XACT = metric(
    "tierwatch_pg_oldest_transaction_age_seconds",
    "gauge",
    "Age of the longest-running transaction of a client backend (0 if none).",
    section=S,
)
OLDEST_IDLE_XACT = metric(
    "tierwatch_pg_oldest_idle_in_transaction_age_seconds",
    "gauge",
    "How long the longest idle-in-transaction session has been idle (0 if none).",
    section=S,
)
COMMITS = metric(
    "tierwatch_pg_commits_total", "counter", "Transactions committed, summed over databases.", section=S
)
ROLLBACKS = metric(
    "tierwatch_pg_rollbacks_total", "counter", "Transactions rolled back, summed over databases.", section=S
)
SYNC_STANDBYS_CONFIGURED = metric(
    "tierwatch_pg_synchronous_standbys_configured",
    "gauge",
    "On a primary: synchronous standbys a commit waits for (num_sync of synchronous_standby_names); "
    "0 = asynchronous replication only.",
    section=S,
)
SYNC_STANDBYS_STREAMING = metric(
    "tierwatch_pg_synchronous_standbys_streaming",
    "gauge",
    "On a primary: streaming standbys whose sync_state is sync or quorum (they can confirm commits).",
    section=S,
)
SYNC_COMMIT_LOCAL = metric(
    "tierwatch_pg_synchronous_commit_local",
    "gauge",
    "On a primary: 1 if synchronous_commit is off or local (commits do not wait for any standby), else 0; "
    "the server default as the monitoring role sees it (roles and transactions can override it).",
    section=S,
)
# The heartbeat commits with synchronous_commit=local (a commit waiting for a synchronous standby
# that is gone would hang every probe) and waits at most lock_timeout for the row (another writer).
HEARTBEAT_LOCK_TIMEOUT_SHARE = 0.2
_HEARTBEAT = (
    "WITH s AS (SELECT set_config('synchronous_commit', 'local', true),"
    " set_config('lock_timeout', {}, true))"
    " INSERT INTO {} (id, ts) SELECT 1, now() FROM s ON CONFLICT (id) DO UPDATE SET ts = excluded.ts"
)


def heartbeat_statement(table: tuple[str, ...], budget: float) -> sql.Composed:
    """The upsert of the heartbeat row into ``table`` (schema, name; quoted as written, never
    interpolated unquoted)."""
    lock_timeout = sql.Literal(f"{max(1, int(budget * HEARTBEAT_LOCK_TIMEOUT_SHARE * 1000))}ms")
    return sql.SQL(_HEARTBEAT).format(lock_timeout, sql.Identifier(*table))


DEADLOCKS = metric(
    "tierwatch_pg_deadlocks_total", "counter", "Deadlocks detected, summed over databases.", section=S
)
START_TIME = metric(
    "tierwatch_pg_start_time_seconds",
    "gauge",
    "Unix time the server (postmaster) started: it changes on a restart.",
    section=S,
)
CONFIG_LOAD_TIME = metric(
    "tierwatch_pg_config_load_time_seconds",
    "gauge",
    "Unix time the server last loaded its configuration files (start or reload).",
    section=S,
)
LOCKS = metric(
    "tierwatch_pg_locks",
    "gauge",
    "Locks held or awaited in the shared lock table (pg_locks rows outside the per-backend fast path).",
    section=S,
)
LOCK_SLOTS = metric(
    "tierwatch_pg_lock_slots",
    "gauge",
    "Size of the shared lock table: max_locks_per_transaction * (max_connections + "
    "max_prepared_transactions).",
    section=S,
)
DATABASE_XID_AGE = metric(
    "tierwatch_pg_database_xid_age",
    "gauge",
    "On a primary: transaction IDs since the database was last frozen, age(datfrozenxid); writes stop "
    "near 2^31. Per database of the server, oldest first, at most 100.",
    ("database",),
    section=S,
)
DATABASE_MXID_AGE = metric(
    "tierwatch_pg_database_mxid_age",
    "gauge",
    "On a primary: multixact IDs since the database was last frozen, mxid_age(datminmxid); writes stop "
    "near 2^31. Per database, like the transaction ID age.",
    ("database",),
    section=S,
)
OLDEST_TABLE_XID_AGE = metric(
    "tierwatch_pg_oldest_table_xid_age",
    "gauge",
    "On a primary: the largest age(relfrozenxid) of the tables of the probed database (the table "
    "autovacuum must freeze first).",
    ("database",),
    section=S,
)
INVALID_INDEXES = metric(
    "tierwatch_pg_invalid_indexes",
    "gauge",
    "On a primary: indexes of the probed database marked invalid (a failed CREATE INDEX CONCURRENTLY or "
    "REINDEX CONCURRENTLY): unused by queries, still maintained on every write.",
    ("database",),
    section=S,
)
TABLE_DEAD_TUPLES = metric(
    "tierwatch_pg_table_dead_tuples",
    "gauge",
    "On a primary: estimated dead rows of the tables with the most of them in the probed database "
    "(cluster setting top_tables, default 5).",
    ("database", "table"),
    section=S,
)
TABLE_LIVE_TUPLES = metric(
    "tierwatch_pg_table_live_tuples",
    "gauge",
    "On a primary: estimated live rows of the same tables.",
    ("database", "table"),
    section=S,
)
TABLE_LAST_VACUUM = metric(
    "tierwatch_pg_table_last_vacuum_timestamp_seconds",
    "gauge",
    "On a primary: Unix time of the last vacuum (auto or manual) of the same tables; 0 = never since "
    "the statistics were reset.",
    ("database", "table"),
    section=S,
)
TABLE_LAST_ANALYZE = metric(
    "tierwatch_pg_table_last_analyze_timestamp_seconds",
    "gauge",
    "On a primary: Unix time of the last analyze (auto or manual) of the same tables; 0 = never.",
    ("database", "table"),
    section=S,
)


def build_query(server_version_num: int, top_tables: int = 5) -> str:
    """The single query of a probe, for a server of this version (13 and later), with per-table
    figures for ``top_tables`` tables."""
    reserved = "current_setting('superuser_reserved_connections')::int"
    if server_version_num >= 160000:
        reserved += " + current_setting('reserved_connections')::int"
    conflicts = [
        "sum(confl_tablespace)",
        "sum(confl_lock)",
        "sum(confl_snapshot)",
        "sum(confl_bufferpin)",
        "sum(confl_deadlock)",
        "sum(confl_active_logicalslot)" if server_version_num >= 160000 else "NULL::numeric",
    ]
    return _QUERY.format(
        reserved=reserved, conflicts=", ".join(conflicts), max_rows=MAX_ROWS, top_tables=top_tables
    )


# Positions: on a primary "pos" is the current WAL write position; on a replica the replay position
# (so rows of cascaded standbys are measured against what this server has). "behind" is the replica's
# own lag in bytes: the furthest WAL position it knows of (received, or announced by the sender)
# minus what it replayed; the lag in seconds is 0 when "behind" is 0, else the age of the last
# replayed commit.
_QUERY = """\
WITH r AS (
  SELECT pg_is_in_recovery() AS rec
), p AS (
  SELECT r.rec,
    CASE WHEN r.rec THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS pos,
    CASE WHEN r.rec THEN pg_last_wal_receive_lsn() END AS received,
    CASE WHEN r.rec THEN pg_last_xact_replay_timestamp() END AS replayed_at,
    CASE WHEN NOT r.rec THEN pg_walfile_name(pg_current_wal_lsn()) END AS walfile
  FROM r
), wr AS (
  SELECT status, latest_end_lsn, received_tli, last_msg_receipt_time FROM pg_stat_wal_receiver LIMIT 1
), lag AS (
  SELECT greatest(pg_wal_lsn_diff(p.received, p.pos), pg_wal_lsn_diff(wr.latest_end_lsn, p.pos), 0)::float8
    AS behind
  FROM p LEFT JOIN wr ON true
), a AS (
  SELECT pid, state, xact_start, state_change FROM pg_stat_activity WHERE backend_type = 'client backend'
), d AS (
  SELECT sum(xact_commit)::float8 AS commits, sum(xact_rollback)::float8 AS rollbacks,
    sum(deadlocks)::float8 AS deadlocks, sum(blks_hit)::float8 AS hits, sum(blks_read)::float8 AS reads
  FROM pg_stat_database
)
SELECT
  p.rec,
  CASE WHEN p.rec THEN coalesce(wr.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
    ELSE ('x' || substr(p.walfile, 1, 8))::bit(32)::int END AS timeline,
  CASE WHEN p.rec THEN lag.behind END AS lag_bytes,
  CASE WHEN NOT p.rec THEN NULL WHEN lag.behind = 0 THEN 0::float8
    -- behind, but nothing replayed since start-up: the age is unknown, so no series (not 0)
    WHEN p.replayed_at IS NULL THEN NULL
    ELSE greatest(extract(epoch FROM now() - p.replayed_at), 0)::float8 END AS lag_seconds,
  CASE WHEN p.rec THEN greatest(pg_wal_lsn_diff(p.received, p.pos), 0)::float8 END AS backlog_bytes,
  CASE WHEN p.rec THEN coalesce(wr.status = 'streaming', false) END AS receiver_up,
  CASE WHEN p.rec THEN greatest(extract(epoch FROM now() - wr.last_msg_receipt_time), 0)::float8
    END AS receiver_silence,
  CASE WHEN p.rec THEN pg_is_wal_replay_paused() END AS paused,
  (SELECT json_agg(json_build_array(
      application_name, state, sync_state,
      pg_wal_lsn_diff(p.pos, sent_lsn)::float8, pg_wal_lsn_diff(p.pos, write_lsn)::float8,
      pg_wal_lsn_diff(p.pos, flush_lsn)::float8, pg_wal_lsn_diff(p.pos, replay_lsn)::float8,
      extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8,
      extract(epoch FROM replay_lag)::float8))
    FROM (SELECT * FROM pg_stat_replication ORDER BY application_name LIMIT {max_rows}) s) AS standbys,
  (SELECT json_agg(json_build_array(
      slot_name, active, greatest(pg_wal_lsn_diff(p.pos, restart_lsn), 0)::float8, wal_status))
    FROM (SELECT * FROM pg_replication_slots ORDER BY slot_name LIMIT {max_rows}) s) AS slots,
  current_setting('archive_mode') <> 'off' AS archiving,
  ar.archived_count, ar.failed_count,
  extract(epoch FROM ar.last_archived_time)::float8 AS last_archived,
  extract(epoch FROM ar.last_failed_time)::float8 AS last_failed,
  (SELECT json_object_agg(coalesce(state, 'disabled'), n)
    FROM (SELECT state, count(*) AS n FROM a GROUP BY state) c) AS connections,
  current_setting('max_connections')::int - ({reserved}) AS conn_limit,
  (SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 FROM a
    WHERE pid <> pg_backend_pid()) AS oldest_xact,
  (SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)::float8 FROM a
    WHERE state LIKE 'idle in transaction%') AS oldest_idle_xact,
  d.commits, d.rollbacks, d.deadlocks, d.hits, d.reads,
  (SELECT json_build_array({conflicts}) FROM pg_stat_database_conflicts) AS conflicts,
  left(current_setting('synchronous_standby_names'), 1000) AS sync_names,
  current_setting('synchronous_commit') AS sync_commit,
  extract(epoch FROM pg_postmaster_start_time())::float8 AS started,
  extract(epoch FROM pg_conf_load_time())::float8 AS conf_loaded,
  (SELECT count(*) FROM pg_locks WHERE NOT fastpath)::float8 AS locks,
  (current_setting('max_locks_per_transaction')::float8 * (current_setting('max_connections')::int
    + current_setting('max_prepared_transactions')::int)) AS lock_slots,
  current_database() AS dbname,
  CASE WHEN NOT p.rec THEN (SELECT json_agg(json_build_array(
      datname, age(datfrozenxid), mxid_age(datminmxid)))
    FROM (SELECT * FROM pg_database ORDER BY age(datfrozenxid) DESC, datname LIMIT {max_rows}) s)
    END AS database_ages,
  CASE WHEN NOT p.rec THEN (SELECT max(age(relfrozenxid)) FROM pg_class WHERE relkind IN ('r', 'm', 't'))
    END AS oldest_table_xid_age,
  -- an index being built concurrently is invalid until the build ends: not counted
  CASE WHEN NOT p.rec THEN (SELECT count(*) FROM pg_index WHERE NOT indisvalid
    AND indexrelid NOT IN (SELECT index_relid FROM pg_stat_progress_create_index)) END AS invalid_indexes,
  CASE WHEN NOT p.rec THEN (SELECT json_agg(json_build_array(
      schemaname || '.' || relname, n_dead_tup, n_live_tup,
      extract(epoch FROM greatest(last_autovacuum, last_vacuum))::float8,
      extract(epoch FROM greatest(last_autoanalyze, last_analyze))::float8))
    FROM (SELECT * FROM pg_stat_user_tables ORDER BY n_dead_tup DESC, relid LIMIT {top_tables}) t)
    END AS tables
FROM p CROSS JOIN lag CROSS JOIN d CROSS JOIN pg_stat_archiver ar LEFT JOIN wr ON true
"""


class PostgresProbe(Probe):
    """Probes one PostgreSQL server over one persistent connection."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._query: str | None = None
        self._version = 0
        self._peers = tuple(t.name for t in info.cluster.targets if t.name != info.name)
        self._guard = ReplyGuard()  # a new one per probe: tripped when the reply passed the cap
        self._heartbeat: tuple[Any, bytes] | None = None  # ((table, budget), its upsert statement)
        patroni = info.cluster.patroni
        member = member_for(patroni, info.name)
        self._patroni = PatroniReader(member, patroni) if member is not None and patroni else None

    async def probe(self, deadline: float | None = None) -> Observation:
        """Run the probe query (connecting first if needed), ending a share of the way to ``deadline``;
        with Patroni, read its view of the target meanwhile (its failure is a sample, never the probe's)."""
        if self._patroni is None:
            return await self._probe_postgres(deadline)
        deadline = self.deadline(deadline)
        own_deadline = asyncio.get_running_loop().time() + _budget(deadline) * OWN_DEADLINE_SHARE
        patroni = asyncio.ensure_future(self._patroni.read(own_deadline))
        started = time.perf_counter()
        try:
            obs = await self._probe_postgres(deadline)
        except BaseException:
            patroni.cancel()
            await asyncio.wait([patroni])
            raise
        # the PostgreSQL exchange's own time: a slow Patroni API must not show as a slow server
        obs.io_seconds = time.perf_counter() - started
        obs.samples.extend(await patroni)
        return obs

    async def _probe_postgres(self, deadline: float | None) -> Observation:
        reason = None
        self._guard = ReplyGuard()
        budget = _budget(self.deadline(deadline))
        own_deadline = asyncio.get_running_loop().time() + budget * OWN_DEADLINE_SHARE
        try:
            async with asyncio.timeout_at(own_deadline):
                row = await self._fetch(budget)
        except TimeoutError as exc:
            release_frames(exc)
            reason = "timeout"
        except psycopg.Error as exc:
            release_frames(exc)
            reason = "protocol" if self._guard.tripped else classify_pg_error(exc)
        except BaseException as exc:
            release_frames(exc)
            await self._close_connection()
            raise
        if reason is not None:
            # raised outside the except blocks: no __context__ keeps the library's exception (and
            # through its traceback a half-open connection) alive
            await self._close_connection()
            raise ProbeFailure(reason, FAILURE_MESSAGES[reason])
        obs = observe(row, self._version, self._peers)
        backup = self.info.cluster.backup
        if obs.role == "primary" and backup is not None:
            if backup.heartbeat_table is not None:
                written = await self._write_heartbeat(backup.heartbeat_table_parts, budget, own_deadline)
                obs.add(BACKUP_HEARTBEAT_WRITE, 1 if written else 0)
            if backup.last_backup_file is not None:
                await observe_base_backup(backup.last_backup_file, obs)
        return obs

    async def _write_heartbeat(self, table: tuple[str, ...], budget: float, own_deadline: float) -> bool:
        """Upsert the heartbeat row on the probe's connection by ``own_deadline``; False if it failed
        (refused, missing table, timed out: the connection is then dropped, the probe still stands)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return False
        if self._heartbeat is None or self._heartbeat[0] != (table, budget):
            self._heartbeat = ((table, budget), heartbeat_statement(table, budget).as_bytes(conn))
        statement = self._heartbeat[1]

        async def execute() -> None:
            await conn.execute(statement)

        task = asyncio.ensure_future(execute())  # it starts at the first await: inside the watch
        try:
            with ReplyGuard().watching(conn):  # a flood is cut as the query's; ends before any abort
                async with asyncio.timeout_at(own_deadline):
                    await asyncio.shield(task)
        except TimeoutError:
            await self._abort(conn, task)
            return False
        except psycopg.Error as exc:
            release_frames(exc)
            if conn.broken or conn.closed:
                await self._close_connection()
            return False
        except asyncio.CancelledError:
            await self._abort(conn, task)
            raise
        return True

    async def close(self) -> None:
        """Close the connections (never waits on the server)."""
        await self._close_connection()
        if self._patroni is not None:
            await self._patroni.close()

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()

    async def _fetch(self, budget: float) -> dict[str, Any]:
        conn = await self._connection(budget)
        task = asyncio.ensure_future(self._execute(conn))  # it starts at the first await: inside the watch
        try:
            with self._guard.watching(conn):  # ends before _abort closes the connection
                return await asyncio.shield(task)
        except asyncio.CancelledError:
            await self._abort(conn, task)
            raise

    async def _connection(self, budget: float) -> psycopg.AsyncConnection[Any]:
        """The kept connection, or a new one whose timeouts are shares of ``budget`` (the probe that
        opens it sets them: a connection's statement_timeout is fixed, and every probe's budget is the
        same ``monitor.timeout``)."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self._close_connection()
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, math.ceil(budget)),
            "application_name": APPLICATION_NAME,
            "options": f"-c statement_timeout={max(1, int(budget * STATEMENT_TIMEOUT_SHARE * 1000))}",
        }
        if self.info.password is not None:
            kwargs["password"] = self.info.password.reveal()
        self._conn = await psycopg.AsyncConnection.connect(self.info.target.url, **kwargs)
        self._version = self._conn.info.server_version
        self._query = build_query(self._version, self.info.cluster.top_tables)
        return self._conn

    async def _execute(self, conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        assert self._query is not None
        async with conn.cursor() as cur:
            await cur.execute(self._query.encode())
            row = await cur.fetchone()
            names = [col.name for col in cur.description or ()]
        if row is None:
            raise ProbeFailure("protocol", "the probe query returned no row")
        return dict(zip(names, row, strict=True))

    async def _abort(self, conn: psycopg.AsyncConnection[Any], task: asyncio.Future[Any]) -> None:
        """End an in-flight query without waiting on the server: shut the socket down, so the
        query task fails at once, then drop the connection."""
        await abort(conn, task)
        await self._close_connection()


def _budget(deadline: float) -> float:
    """The time left until ``deadline``, in whole milliseconds (the unit of statement_timeout): the
    microseconds between the caller setting the deadline and the probe starting do not count."""
    return round(remaining(deadline), 3)


def release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s tracebacks (and its causes').

    A connect cancelled half-way leaves psycopg's connection generator, and the socket it owns,
    in those frames, in a reference cycle the garbage collector does not free: without this the
    socket would stay open for as long as anyone keeps the exception.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        current = current.__cause__ or current.__context__


FAILURE_MESSAGES: dict[str, str] = {
    "auth": "authentication failed (check the role, its password and pg_hba.conf)",
    "refused": "connection refused or server not reachable",
    "timeout": "no answer within the probe deadline",
    "protocol": "unexpected answer from the server",
    "error": "query or connection failed",
}


def observe(row: Mapping[str, Any], server_version_num: int, peers: Iterable[str] = ()) -> Observation:
    """Turn the probe query's row into an Observation; ``peers`` are the other targets of the cluster."""
    replica = bool(row["rec"])
    obs = Observation(role="replica" if replica else "primary")
    obs.add(SERVER_VERSION, server_version_num)
    if row["timeline"] is not None:
        obs.add(TIMELINE, row["timeline"])
    if replica:
        _observe_replica(obs, row)
    _observe_standbys(obs, row["standbys"] or [], () if replica else peers)
    if not replica:
        _observe_synchronous(obs, row)
    _observe_slots(obs, row["slots"] or [])
    _observe_archiver(obs, row)
    _observe_activity(obs, row)
    _observe_server(obs, row)
    if not replica:
        _observe_maintenance(obs, row)
    return obs


def _observe_replica(obs: Observation, row: Mapping[str, Any]) -> None:
    obs.add(REPLICATION_LAG_BYTES, row["lag_bytes"])
    if row["lag_seconds"] is not None:
        obs.add(REPLICATION_LAG_SECONDS, row["lag_seconds"])
    obs.add(REPLAY_BACKLOG, row["backlog_bytes"])
    obs.add(WAL_RECEIVER_UP, 1 if row["receiver_up"] else 0)
    if row["receiver_silence"] is not None:
        obs.add(WAL_RECEIVER_SILENCE, row["receiver_silence"])
    obs.add(REPLAY_PAUSED, 1 if row["paused"] else 0)
    for kind, value in zip(CONFLICT_KINDS, row["conflicts"] or (), strict=False):
        if value is not None:
            obs.add(CONFLICTS, value, kind)


def _observe_standbys(obs: Observation, rows: list[list[Any]], peers: Iterable[str]) -> None:
    """Per standby (application_name): count, state, sync state, lag; duplicates of one name are
    counted together and their lag is the worst of them."""
    counts: dict[str, int] = dict.fromkeys(peers, 0)
    states: dict[tuple[str, str], int] = {}
    syncs: dict[tuple[str, str], int] = {}
    lag_bytes: dict[tuple[str, str], float] = {}
    lag_seconds: dict[tuple[str, str], float] = {}
    for name, state, sync, *rest in rows:
        name = str(name or "")[:63] or "unnamed"
        counts[name] = counts.get(name, 0) + 1
        states[name, state] = states.get((name, state), 0) + 1
        syncs[name, sync] = syncs.get((name, sync), 0) + 1
        sent, write, flush, replay, write_s, flush_s, replay_s = rest
        stage_bytes = {"sent": sent, "write": write, "flush": flush, "replay": replay}
        for stage, value in stage_bytes.items():
            if value is not None:
                key = (name, stage)
                lag_bytes[key] = max(lag_bytes.get(key, 0.0), max(float(value), 0.0))
        for stage, seconds in (("write", write_s), ("flush", flush_s), ("replay", replay_s)):
            if seconds is None and stage_bytes[stage] != 0:
                continue  # not measured yet while behind: unknown, not zero
            key = (name, stage)
            lag_seconds[key] = max(lag_seconds.get(key, 0.0), float(seconds or 0.0))
    for name, count in counts.items():
        obs.add(STANDBY_CONNECTED, count, name)
        if count:
            for state in STANDBY_STATES:
                obs.add(STANDBY_STATE, states.get((name, state), 0), name, state)
            for sync in SYNC_STATES:
                obs.add(STANDBY_SYNC_STATE, syncs.get((name, sync), 0), name, sync)
    for (name, stage), value in lag_bytes.items():
        obs.add(STANDBY_LAG_BYTES, value, name, stage)
    for (name, stage), value in lag_seconds.items():
        obs.add(STANDBY_LAG_SECONDS, value, name, stage)


_NUM_SYNC = re.compile(r"^\s*(?:(?:FIRST|ANY)\s+)?(\d+)\s*\(", re.IGNORECASE)


def synchronous_standbys_required(names: str) -> int:
    """num_sync of a synchronous_standby_names value: ``[FIRST|ANY] N (a, b)`` gives N, a bare list
    (``a, b`` or ``*``) means FIRST 1, an empty value 0."""
    if not names.strip():
        return 0
    match = _NUM_SYNC.match(names)
    return int(match.group(1)) if match else 1


def _observe_synchronous(obs: Observation, row: Mapping[str, Any]) -> None:
    obs.add(SYNC_STANDBYS_CONFIGURED, synchronous_standbys_required(row["sync_names"] or ""))
    streaming = sum(
        1
        for _, state, sync, *_ in row["standbys"] or []
        if state == "streaming" and sync in ("sync", "quorum")
    )
    obs.add(SYNC_STANDBYS_STREAMING, streaming)
    obs.add(SYNC_COMMIT_LOCAL, 1 if row["sync_commit"] in ("off", "local") else 0)


def _observe_slots(obs: Observation, rows: list[list[Any]]) -> None:
    for name, active, retained, wal_status in rows:
        obs.add(SLOT_ACTIVE, 1 if active else 0, name)
        if retained is not None:
            obs.add(SLOT_RETAINED, retained, name)
        for status in WAL_STATUSES:
            obs.add(SLOT_WAL_STATUS, 1 if wal_status == status else 0, name, status)


def _observe_archiver(obs: Observation, row: Mapping[str, Any]) -> None:
    obs.add(ARCHIVING_ENABLED, 1 if row["archiving"] else 0)
    obs.add(ARCHIVED, row["archived_count"])
    obs.add(ARCHIVE_FAILURES, row["failed_count"])
    if row["last_archived"] is not None:
        obs.add(LAST_ARCHIVED, row["last_archived"])
    if row["last_failed"] is not None:
        obs.add(LAST_ARCHIVE_FAILURE, row["last_failed"])


def _observe_activity(obs: Observation, row: Mapping[str, Any]) -> None:
    by_state = dict.fromkeys(CONNECTION_STATES.values(), 0)
    for state, count in (row["connections"] or {}).items():
        key = CONNECTION_STATES.get(state, "disabled")
        by_state[key] += count
    for state, count in by_state.items():
        obs.add(CONNECTIONS, count, state)
    obs.add(CONNECTIONS_LIMIT, row["conn_limit"])
    obs.add(OLDEST_XACT, row["oldest_xact"])
    obs.add(OLDEST_IDLE_XACT, row["oldest_idle_xact"])
    obs.add(COMMITS, row["commits"] or 0)
    obs.add(ROLLBACKS, row["rollbacks"] or 0)
    obs.add(DEADLOCKS, row["deadlocks"] or 0)
    obs.add(CACHE_HITS, row["hits"] or 0)
    obs.add(CACHE_MISSES, row["reads"] or 0)


def _observe_server(obs: Observation, row: Mapping[str, Any]) -> None:
    obs.add(START_TIME, row["started"])
    obs.add(CONFIG_LOAD_TIME, row["conf_loaded"])
    obs.add(LOCKS, row["locks"])
    obs.add(LOCK_SLOTS, row["lock_slots"])


def _observe_maintenance(obs: Observation, row: Mapping[str, Any]) -> None:
    """Wraparound, invalid indexes and the vacuum figures of the top tables (a primary's: a replica
    shares its XID space and has no vacuum statistics of its own)."""
    for name, xid_age, mxid_age in row["database_ages"] or ():
        obs.add(DATABASE_XID_AGE, xid_age, name)
        obs.add(DATABASE_MXID_AGE, mxid_age, name)
    database = row["dbname"]
    if row["oldest_table_xid_age"] is not None:
        obs.add(OLDEST_TABLE_XID_AGE, row["oldest_table_xid_age"], database)
    obs.add(INVALID_INDEXES, row["invalid_indexes"] or 0, database)
    for table, dead, live, vacuumed, analyzed in row["tables"] or ():
        table = str(table)[:127]  # schema.name: two identifiers of at most 63 bytes
        obs.add(TABLE_DEAD_TUPLES, dead, database, table)
        obs.add(TABLE_LIVE_TUPLES, live, database, table)
        obs.add(TABLE_LAST_VACUUM, vacuumed or 0, database, table)
        obs.add(TABLE_LAST_ANALYZE, analyzed or 0, database, table)
