"""Restore test of one PostgreSQL set: pgBackRest restores the newest backup (or to a target time) into
a new run directory, a throwaway server (unix socket only, dying with this process) replays the WAL
and is promoted, each verify query must give its number; then it is stopped and the run directory removed.

RTO is restore start -> verified (monotonic clock); RPO is the wall-clock time at restore start minus
the newest restored write: the heartbeat row if configured, else the last replayed commit, else the
backup's stop time.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..config.backups import BackupSet, BackupsSettings, VerifyQuery
from . import pg_server, pgbackrest
from .accounts import OsUser, chown, resolve_os_user, user_name
from .outcome import Outcome, StageError
from .scratch import RunDir, SetLock, check_space, prepare_scratch, remove_leftovers, tree_bytes

MAX_STATEMENT_MS = 600_000


def free_port() -> int:
    """A port number nobody listens on at 127.0.0.1 now (the server listens on no TCP address: the
    number names its socket file and shared memory)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_test(settings: BackupsSettings, bset: BackupSet, target: datetime | None) -> Outcome:
    source = bset.pgbackrest
    assert source is not None
    where = f"backups.sets.{bset.name}.pgbackrest"
    user = resolve_os_user(source.os_user, where)
    scratch = prepare_scratch(settings.scratch_dir)
    deadline = time.monotonic() + bset.timeout
    with SetLock(scratch, bset.name):
        remove_leftovers(scratch, bset.name)
        backup = pgbackrest.choose(pgbackrest.read_backups(source, user, bset.timeout), target)
        check_space(scratch, backup.size, bset.min_free_bytes)
        bins = pg_server.bin_dir(source, backup.pg_version)
        run = RunDir(scratch, bset.name, user)
        try:
            return _restore_and_verify(bset, user, run, backup, bins, target, deadline)
        finally:
            run.remove()


def _restore_and_verify(
    bset: BackupSet,
    user: OsUser | None,
    run: RunDir,
    backup: pgbackrest.Backup,
    bins: Path,
    target: datetime | None,
    deadline: float,
) -> Outcome:
    source = bset.pgbackrest
    assert source is not None
    data_dir, tablespaces = run.path / "data", run.path / "tablespaces"
    pg_server.check_socket_dir(run.path, "the run directory")
    for path in (data_dir, tablespaces):
        path.mkdir(mode=0o700)
        chown(path, user)
    wall_start, started = time.time(), time.monotonic()
    pgbackrest.restore(
        source,
        user,
        data_dir=data_dir,
        tablespace_dir=tablespaces,
        backup=backup,
        target=target,
        target_action="promote",
        timeout=deadline - time.monotonic(),
    )
    instance = pg_server.Instance(data_dir, run.path, free_port(), listen="", hot_standby=False)
    pg_server.write_access_files(instance, user, tcp_password_logins=False)
    limits = pg_server.control_settings(bins, data_dir, user)
    argv = pg_server.server_argv(bins, instance, limits, name=f"tierwatch-restore-{bset.name}")
    log_path = run.path / "postgres.log"
    process = pg_server.start(argv, user, log_path=log_path, die_with_parent=True)
    try:
        run.add_child(process.pid)
        dbuser = user_name(user)
        pg_server.wait_for(
            process, instance, dbuser, pg_server.promoted, deadline=deadline,
            what="the restored server to finish recovery", log_path=log_path,
        )  # fmt: skip
        for query in bset.verify:
            _verify(instance, dbuser, bset.database, query, deadline)
        rto = time.monotonic() - started
        newest = _newest_write(instance, dbuser, bset) or backup.stop
        return Outcome(
            success=True,
            rto_seconds=rto,
            rpo_seconds=max(0.0, wall_start - newest),
            restored_bytes=tree_bytes(data_dir),
            backup_label=backup.label,
        )
    finally:
        pg_server.shut_down(process)


def _statement_timeout(deadline: float) -> int:
    return int(min(MAX_STATEMENT_MS, max(1.0, deadline - time.monotonic()) * 1000))


def _verify(
    instance: pg_server.Instance, dbuser: str, default_db: str, query: VerifyQuery, deadline: float
) -> None:
    import psycopg

    database = query.database or default_db
    try:
        with pg_server.connect(instance, dbuser, database) as conn:
            conn.execute(f"SET statement_timeout = {_statement_timeout(deadline)}")
            conn.autocommit = False
            conn.read_only = True
            cur = conn.execute(query.query)  # type: ignore[arg-type]  # the config's own text
            row = cur.fetchone() if cur.description else None
            conn.rollback()
    except psycopg.Error as exc:
        raise StageError("verify", f"verify {query.name}: the query failed ({type(exc).__name__})") from None
    if row is None or len(row) != 1:
        raise StageError("verify", f"verify {query.name}: expected one row of one column")
    value = row[0]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise StageError("verify", f"verify {query.name}: expected a number")
    number = float(value)
    problem = _compare(number, query)
    if problem:
        raise StageError("verify", f"verify {query.name}: got {number:g}, expected {problem}")


def _compare(number: float, query: VerifyQuery) -> str | None:
    if query.equals is not None and number != query.equals:
        return f"{query.equals:g}"
    if query.min is not None and number < query.min:
        return f">= {query.min:g}"
    if query.max is not None and number > query.max:
        return f"<= {query.max:g}"
    return None


def _newest_write(instance: pg_server.Instance, dbuser: str, bset: BackupSet) -> float | None:
    """The heartbeat row's time if configured (stage verify: it must be readable), else the last
    replayed commit's."""
    import psycopg
    from psycopg import sql

    with pg_server.connect(instance, dbuser, bset.database) as conn:
        if bset.heartbeat_table:
            table = sql.Identifier(*bset.heartbeat_table.split("."))
            try:
                row: Any = conn.execute(
                    sql.SQL("SELECT extract(epoch FROM max(ts))::float8 FROM {}").format(table)
                ).fetchone()
            except psycopg.Error as exc:
                raise StageError(
                    "verify", f"heartbeat table: cannot read it ({type(exc).__name__})"
                ) from None
            if row is None or row[0] is None:
                raise StageError("verify", "heartbeat table: no row in the restored copy")
            return float(row[0])
        row = conn.execute("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8").fetchone()
        return float(row[0]) if row and row[0] is not None else None
