"""A PostgreSQL server on a restored data directory that cannot reach production.

Its settings go on the command line, which outranks postgresql.conf, its includes and the restored
postgresql.auto.conf (production's ALTER SYSTEM values, pgBackRest's restore settings): its own data
directory, hba and ident files, port and socket directory; no archiving (the production stanza must not
receive its WAL), no primary_conninfo or slot, no synchronous standbys, no preloaded libraries (a
scheduler extension such as pg_cron would run production's jobs), no logging collector (production's
log directory), no SSL files. The connection limits recovery checks come from the restored
pg_control, so a hot standby is never refused for a lower setting than the primary's.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.backups import PgBackRestSource
from .accounts import OsUser, chown, run, spawn, stop
from .outcome import StageError

_CONTROL_SETTINGS = {
    "max_connections setting": "max_connections",
    "max_worker_processes setting": "max_worker_processes",
    "max_wal_senders setting": "max_wal_senders",
    "max_prepared_xacts setting": "max_prepared_transactions",
    "max_locks_per_xact setting": "max_locks_per_transaction",
}
POLL = 0.2


def bin_dir(source: PgBackRestSource, version: str | None) -> Path:
    """The configured pg_bin_dir, else /usr/lib/postgresql/<the backup's version>/bin, else the newest."""
    if source.pg_bin_dir:
        return Path(source.pg_bin_dir)
    root = Path("/usr/lib/postgresql")
    if version and (root / version / "bin" / "postgres").exists():
        return root / version / "bin"
    found = sorted(
        (p.parent for p in root.glob("*/bin/postgres")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise StageError("start", "no PostgreSQL server in /usr/lib/postgresql: set pgbackrest.pg_bin_dir")
    return found[-1]


MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes on Linux, its terminating NUL included


def check_socket_dir(directory: Path, what: str) -> None:
    """Refuse (stage prepare, before anything is restored) a socket directory whose socket path
    ``DIR/.s.PGSQL.<port>`` would not fit a unix socket address: postgres would restore, start and
    then fail with no socket at all."""
    longest = len(os.fsencode(directory / ".s.PGSQL.65535"))
    if longest > MAX_SOCKET_PATH:
        raise StageError(
            "prepare",
            f"{what} {directory} is too long for a unix socket below it ({longest} bytes with the "
            f"socket's name, at most {MAX_SOCKET_PATH}): use a shorter path",
        )


@dataclass(frozen=True)
class Instance:
    """Where a restored server lives and how it listens."""

    data_dir: Path
    socket_dir: Path
    port: int
    listen: str  # '' for a unix socket only
    hot_standby: bool


def control_settings(bins: Path, data_dir: Path, user: OsUser | None) -> dict[str, str]:
    """The primary's connection limits recorded in the restored pg_control."""
    out = run([str(bins / "pg_controldata"), str(data_dir)], user, timeout=60, stage="start")
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in _CONTROL_SETTINGS and value.strip().isdigit():
            found[_CONTROL_SETTINGS[key.strip()]] = value.strip()
    return found


def write_access_files(instance: Instance, user: OsUser | None, tcp_password_logins: bool) -> None:
    """Our own pg_hba.conf and an empty pg_ident.conf (the restored ones are production's), and a
    postgresql.conf when the backup had none (Debian keeps it in /etc)."""
    lines = [
        "# written by tierwatch: the socket directory (mode 0700) admits only root and the OS user",
        "local all all trust",
    ]
    if tcp_password_logins:
        lines.append("host all all 127.0.0.1/32 scram-sha-256")
    files = {
        "tierwatch_hba.conf": "\n".join(lines) + "\n",
        "tierwatch_ident.conf": "# written by tierwatch: no maps\n",
    }
    if not (instance.data_dir / "postgresql.conf").exists():
        files["postgresql.conf"] = "# written by tierwatch: the backup held no postgresql.conf\n"
    for name, text in files.items():
        path = instance.data_dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        chown(path, user)


def server_argv(bins: Path, instance: Instance, limits: dict[str, str], name: str) -> list[str]:
    data = instance.data_dir
    settings = {
        "data_directory": str(data),
        "config_file": str(data / "postgresql.conf"),
        "hba_file": str(data / "tierwatch_hba.conf"),
        "ident_file": str(data / "tierwatch_ident.conf"),
        "listen_addresses": instance.listen,
        "port": str(instance.port),
        "unix_socket_directories": str(instance.socket_dir),
        "unix_socket_permissions": "0700",
        "archive_mode": "off",
        "archive_command": "",
        "primary_conninfo": "",
        "primary_slot_name": "",
        "synchronous_standby_names": "",
        "shared_preload_libraries": "",
        "logging_collector": "off",
        "log_destination": "stderr",
        "ssl": "off",
        "hot_standby": "on" if instance.hot_standby else "off",
        "shared_buffers": "128MB",
        "huge_pages": "off",
        "cluster_name": name,
        **limits,
    }
    argv = [str(bins / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def start(
    argv: list[str], user: OsUser | None, *, log_path: Path, die_with_parent: bool
) -> subprocess.Popen[bytes]:
    """Start the postmaster (stage start)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    chown(log_path, user)
    with os.fdopen(fd, "ab") as log:
        try:
            return spawn(argv, user, log=log, cwd=Path(argv[2]), die_with_parent=die_with_parent)
        except OSError as exc:
            raise StageError("start", f"cannot start {argv[0]}: {exc.strerror}") from None


def connect(instance: Instance, dbuser: str, dbname: str = "postgres", timeout: float = 5.0) -> Any:
    """An autocommit superuser connection over the unix socket."""
    import psycopg

    return psycopg.connect(
        host=str(instance.socket_dir),
        port=instance.port,
        user=dbuser,
        dbname=dbname,
        autocommit=True,
        connect_timeout=max(2, int(timeout)),
        application_name="tierwatch-restore",
    )


def log_tail(log_path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(
    process: subprocess.Popen[bytes],
    instance: Instance,
    dbuser: str,
    ready: Callable[[Any], bool],
    *,
    deadline: float,
    what: str,
    log_path: Path,
) -> None:
    """Poll until ``ready(connection)`` (stage recovery); fail at once if the server exited."""
    import psycopg

    while True:
        code = process.poll()
        if code is not None:
            raise StageError(
                "recovery", f"the restored server exited with code {code}:\n{log_tail(log_path)}"
            )
        try:
            with connect(instance, dbuser, timeout=2) as conn:
                if ready(conn):
                    return
        except psycopg.Error:
            pass
        if time.monotonic() >= deadline:
            raise StageError("recovery", f"timed out waiting for {what}:\n{log_tail(log_path)}")
        time.sleep(POLL)


def promoted(conn: Any) -> bool:
    return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0] is True


def paused(conn: Any) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()").fetchone()
    return bool(row[0]) and row[1] == "paused"


def shut_down(process: subprocess.Popen[bytes]) -> None:
    """Fast shutdown (SIGINT), SIGKILL after 30 s."""
    import signal

    stop(process, signal.SIGINT, grace=30.0)
