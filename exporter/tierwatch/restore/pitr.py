"""``tierwatch pitr``: restore a PostgreSQL set to a point in time into a NEW instance, for a person.

The data directory must be new or empty and outside any data directory, the port free; the server
listens on 127.0.0.1 only, with the same neutralised settings as the restore test (no archiving into
the production stanza, no primary_conninfo, ...), paused at the target (``--target-action=pause``) so
a person can look, or promoted with ``--promote``. It is left running: no parent-death signal here.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from ..config.backups import BackupSet
from . import pg_server, pgbackrest
from .accounts import chown, resolve_os_user, user_name
from .outcome import StageError
from .scratch import inside_data_directory

START_TIMEOUT = 600.0


def check_new_instance(data_dir: Path, port: int) -> None:
    """Refuse a non-empty directory, one inside a data directory, and a port in use (stage prepare)."""
    if not 1 <= port <= 65535:
        raise StageError("prepare", "--port: expected a port between 1 and 65535")
    if data_dir.is_symlink() or (data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir()))):
        raise StageError("prepare", f"--data-dir {data_dir} exists and is not an empty directory: refused")
    found = inside_data_directory(data_dir.resolve())
    if found is not None:
        raise StageError("prepare", f"--data-dir {data_dir} is inside the data directory {found}: refused")
    pg_server.check_socket_dir(data_dir.absolute(), "--data-dir")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StageError("prepare", f"--port {port} is in use on 127.0.0.1: choose another") from None
    if Path(f"/tmp/.s.PGSQL.{port}").exists() or Path(f"/var/run/postgresql/.s.PGSQL.{port}").exists():
        raise StageError("prepare", f"--port {port}: a PostgreSQL socket of that port exists: choose another")


def run_pitr(bset: BackupSet, target: datetime, data_dir: Path, port: int, *, promote: bool) -> str:
    """Restore and start; the instructions for the person (the server is running when it returns)."""
    source = bset.pgbackrest
    if source is None:
        raise StageError(
            "prepare",
            f"backup set {bset.name} is a Redis set: an RDB snapshot is one point in time, so there is no "
            "PITR; restore-test checks them, and a snapshot is restored by copying it into place",
        )
    user = resolve_os_user(source.os_user, f"backups.sets.{bset.name}.pgbackrest")
    data_dir = Path(os.path.abspath(data_dir))
    check_new_instance(data_dir, port)
    tablespaces = data_dir.parent / f"{data_dir.name}.tablespaces"
    if tablespaces.exists() or tablespaces.is_symlink():
        raise StageError("prepare", f"{tablespaces} (where tablespaces would go) exists: refused")
    backups = pgbackrest.read_backups(source, user, START_TIMEOUT)
    backup = pgbackrest.choose(backups, target)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    chown(data_dir, user)
    tablespaces.mkdir(mode=0o700)  # checked absent with the data directory
    chown(tablespaces, user)
    deadline = time.monotonic() + bset.timeout
    pgbackrest.restore(
        source, user, data_dir=data_dir, tablespace_dir=tablespaces, backup=backup, target=target,
        target_action="promote" if promote else "pause", timeout=bset.timeout,
    )  # fmt: skip
    bins = pg_server.bin_dir(source, backup.pg_version)
    instance = pg_server.Instance(data_dir, data_dir, port, listen="127.0.0.1", hot_standby=True)
    pg_server.write_access_files(instance, user, tcp_password_logins=True)
    limits = pg_server.control_settings(bins, data_dir, user)
    argv = pg_server.server_argv(bins, instance, limits, name=f"tierwatch-pitr-{bset.name}")
    log_path = data_dir / "tierwatch-pitr.log"
    process = pg_server.start(argv, user, log_path=log_path, die_with_parent=False)
    dbuser = user_name(user)
    try:
        pg_server.wait_for(
            process, instance, dbuser, pg_server.promoted if promote else pg_server.paused,
            deadline=deadline, what="the server to reach the target", log_path=log_path,
        )  # fmt: skip
    except BaseException:
        pg_server.shut_down(process)
        raise
    return _instructions(bset, target, data_dir, port, dbuser, bins, promote, process.pid, tablespaces)


def _instructions(
    bset: BackupSet,
    target: datetime,
    data_dir: Path,
    port: int,
    dbuser: str,
    bins: Path,
    promote: bool,
    pid: int,
    tablespaces: Path,
) -> str:
    as_user = f"sudo -u {dbuser} " if os.geteuid() == 0 else ""
    state = "promoted (read-write)" if promote else "paused at the target, read-only"
    lines = [
        f"{bset.name}: restored to {target.isoformat()} in {data_dir}, postgres pid {pid}, {state}.",
        "",
        "Connect:",
        f"  {as_user}psql -h {data_dir} -p {port} -U {dbuser} postgres     # unix socket",
        f"  psql 'host=127.0.0.1 port={port} dbname=postgres user=ROLE'   # production's roles",
    ]
    if not promote:
        lines += [
            "Look, then either keep this point and open it for writes:",
            "  SELECT pg_wal_replay_resume();     -- ends recovery here and promotes",
            f"  or: {as_user}{bins / 'pg_ctl'} promote -D {data_dir}",
        ]
    lines += [
        "Copy data back to production (a table, after checking it):",
        f"  {as_user}{bins / 'pg_dump'} -h {data_dir} -p {port} -U {dbuser} -t TABLE --data-only DB \\",
        "    | psql 'host=PRODUCTION dbname=DB user=ROLE'",
        "Stop and remove it when done:",
        f"  {as_user}{bins / 'pg_ctl'} stop -D {data_dir} -m fast",
        f"  rm -rf {data_dir} {tablespaces}",
        f"Server log: {data_dir / 'tierwatch-pitr.log'}",
    ]
    return "\n".join(lines)


def print_instructions(text: str) -> None:
    print(text, file=sys.stdout, flush=True)
