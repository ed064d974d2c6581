"""Real PostgreSQL servers for tests and ``tierwatch demo``: a primary, streaming replicas, archiving.

Every server runs as the ``postgres`` OS user on 127.0.0.1 with its own data directory inside the
Stack; its unix socket lives in the data directory (mode 0700, so only root and postgres reach it) and
the superuser ``postgres`` is trusted there for setup SQL. Over TCP every login needs a SCRAM
password (the superuser has none, so it cannot log in that way): ``tierwatch`` (member of
``pg_monitor``, what the exporter uses), ``replicator`` for streaming replication (its password sits
in a 0600 passfile, never in a conninfo), and any role a caller creates with a password.

Replicas are cloned with ``pg_basebackup -R``; their ``primary_conninfo`` carries
``application_name=<target name>``, the convention the exporter uses to map a standby row of
``pg_stat_replication`` to a configured target (docs/tiers/postgres.md).
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql as pgsql

from .ports import free_port
from .process import ManagedProcess, Stack, StackError

OS_USER = "postgres"
SUPERUSER = "postgres"
MONITOR_ROLE = "tierwatch"
REPLICATION_ROLE = "replicator"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, including ".s.PGSQL.<port>"

HBA = f"""\
# written by tierwatch_lab.stack.postgres
local   all          {SUPERUSER}                         trust
local   replication  {SUPERUSER}                         trust
host    all          all                 127.0.0.1/32  scram-sha-256
host    replication  {REPLICATION_ROLE}    127.0.0.1/32  scram-sha-256
"""

BASE_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    # a replica whose primary vanished retries (and notices a promotion request) every 200 ms,
    # instead of the default 5 s that would stall pg_promote right after the primary died
    "wal_retrieve_retry_interval": "200ms",
    "wal_receiver_status_interval": "1s",
    "wal_log_hints": "on",  # a returning old primary can be rewound (pg_rewind, the pg_rejoin action)
    "shared_buffers": "16MB",
    "max_connections": "40",
    "superuser_reserved_connections": "3",
    "fsync": "off",  # throwaway servers: durability is not what they are for
    "log_line_prefix": "%m [%p] ",
}

# Settings of a server whose log a collector reads (stack/rsyslog.py; merge into ``settings``): every
# line starts with its SQLSTATE (``40P01 ERROR:  deadlock detected``), so log-to-metrics programs can
# count error classes; checkpoints and lock waits are logged. The log stays on stderr, a file the
# collector reads: PostgreSQL's syslog goes through syslog(3), which can only reach /dev/log.
LOG_SETTINGS: dict[str, str] = {
    "log_line_prefix": "%e ",
    "log_checkpoints": "on",
    "log_lock_waits": "on",
    "lc_messages": "C",  # the English texts log-to-metrics programs match
}


def pg_bin_dir() -> Path:
    """The directory of the PostgreSQL server binaries ($TIERWATCH_PG_BIN or the newest in /usr/lib)."""
    env = os.environ.get("TIERWATCH_PG_BIN")
    if env:
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    if not found:
        raise StackError("no PostgreSQL server found in /usr/lib/postgresql; install postgresql")
    return found[-1].parent


class PgProcess(ManagedProcess):
    """A postmaster. Its children each run in their own session (PostgreSQL calls setsid), so a
    signal to the process group would miss them: ``signal`` reaches the postmaster and every child,
    which makes ``pause`` freeze the whole server. ``stop`` is a fast shutdown (SIGINT)."""

    def signal(self, sig: int) -> None:
        if not self.running():
            return
        for pid in (self.pid, *child_pids(self.pid)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> None:
        if self.running():
            self.signal(signal.SIGCONT)
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            self._reap(timeout)
        super().stop(timeout=5.0)


def child_pids(parent: int) -> list[int]:
    """Pids of the direct children of ``parent`` (from /proc)."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@dataclass
class ArchiveControl:
    """A settable ``archive_command``: a shell script that copies WAL into ``archive_dir`` unless
    the file ``fail_flag`` exists, in which case it fails."""

    script: Path
    archive_dir: Path
    fail_flag: Path

    def set_failing(self, failing: bool) -> None:
        """Make the archive command fail (True) or succeed (False) from its next run on."""
        if failing:
            self.fail_flag.touch()
        else:
            self.fail_flag.unlink(missing_ok=True)

    @property
    def command(self) -> str:
        return f"'{self.script}' %p %f"


@dataclass
class PgServer:
    """One running PostgreSQL server of a Stack."""

    name: str
    port: int
    data_dir: Path
    process: PgProcess
    monitor_password: str
    primary: PgServer | None = None
    archive: ArchiveControl | None = None
    settings: dict[str, str] = field(default_factory=dict)
    launcher: list[str] = field(default_factory=list)  # argv prefix it runs under (start_primary)

    @property
    def socket_dir(self) -> Path:
        # beside the data directory, not in it: pg_rewind copies a data directory and cannot copy a socket
        return self.data_dir.parent

    @property
    def dsn_without_password(self) -> str:
        """What a tierwatch config holds for this server: the monitor role, no password."""
        return f"postgresql://{MONITOR_ROLE}@127.0.0.1:{self.port}/postgres"

    def connect(self, *, timeout: float = 5.0, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit superuser connection over the unix socket (caller closes it)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=max(2, int(timeout)),
            **kwargs,
        )

    def sql(
        self, query: str | pgsql.Composable, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as superuser; the rows it returned (empty if none)."""
        with self.connect() as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row of a query."""
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the server accepts superuser connections (raise with its log if it died)."""
        _poll(
            self.process, lambda: self.scalar("SELECT 1") == 1, timeout, f"{self.name} to accept connections"
        )

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until this replica's WAL receiver streams and its primary lists it."""
        if self.primary is None:
            raise StackError(f"{self.name} is not a replica")
        primary = self.primary

        def streaming() -> bool:
            status = self.scalar("SELECT status FROM pg_stat_wal_receiver")
            listed = primary.scalar(
                "SELECT count(*) FROM pg_stat_replication"
                " WHERE application_name = %s AND state = 'streaming'",
                (self.name,),
            )
            return status == "streaming" and bool(listed)

        _poll(self.process, streaming, timeout, f"{self.name} to stream from {primary.name}")

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait until this replica replayed everything its primary has written so far."""
        if self.primary is None:
            raise StackError(f"{self.name} is not a replica")
        target = self.primary.scalar("SELECT pg_current_wal_lsn()::text")

        def replayed() -> bool:
            return bool(self.scalar("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)))

        _poll(self.process, replayed, timeout, f"{self.name} to replay up to {target}")

    def promote(self, timeout: float = 30.0) -> None:
        """Promote this replica (pg_promote) and wait until it accepts writes."""
        if not self.scalar("SELECT pg_promote(true, %s)", (max(1, int(timeout)),)):
            raise StackError(f"{self.name} did not finish promotion within {timeout:g}s")
        _poll(self.process, lambda: not self.in_recovery(), timeout, f"{self.name} to leave recovery")

    def stop(self) -> None:
        """Fast shutdown of this server (also done by Stack.close)."""
        self.process.stop()


def start_primary(
    stack: Stack,
    name: str,
    *,
    port: int | None = None,
    monitor_password: str | None = None,
    archive: bool = False,
    settings: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    launcher: Sequence[str] = (),
    hba_networks: Sequence[str] = (),
) -> PgServer:
    """initdb and start a primary with the monitor and replication roles; ready when it returns.
    ``launcher``: an argv prefix it runs under (e.g. ``ip netns exec NS``: stack/servernet.py; as
    root); ``hba_networks``: more networks (CIDR) whose password logins and replication it accepts
    (its replicas and a pg_rewind copy them)."""
    base = _server_dir(stack, name)
    data_dir = base / "data"
    _check_socket_path(data_dir)
    _run_as_postgres(
        [str(pg_bin_dir() / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, "-A", "trust",
         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
        cwd=base,
        timeout=timeout,
    )  # fmt: skip
    extra = "".join(
        f"host    all          all                 {net}  scram-sha-256\n"
        f"host    replication  {REPLICATION_ROLE}    {net}  scram-sha-256\n"
        for net in hba_networks
    )
    (data_dir / "pg_hba.conf").write_text(HBA + extra)
    with open(data_dir / "postgresql.conf", "a") as conf:
        conf.write("\ninclude_if_exists = 'tierwatch.conf'\n")
    archive_control = _archive_control(stack, base) if archive else None
    merged = dict(settings or {})
    if archive_control is not None:
        merged = {"archive_mode": "on", "archive_command": archive_control.command, **merged}
    server = PgServer(
        name=name,
        port=port or free_port(),
        data_dir=data_dir,
        process=_new_process(stack, name, data_dir, base, launcher),
        monitor_password=monitor_password or secrets.token_urlsafe(18),
        archive=archive_control,
        settings=merged,
        launcher=list(launcher),
    )
    _write_settings(server)
    server.process.start()
    server.wait_ready(timeout)
    _create_roles(server, stack)
    return server


def start_replica(
    stack: Stack,
    primary: PgServer,
    name: str,
    *,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
    wait_streaming: bool = True,
    timeout: float = 60.0,
) -> PgServer:
    """Clone ``primary`` with pg_basebackup -R (application_name = ``name``) and start it as a
    streaming replica; streaming (and listed by the primary) when it returns, unless told not to wait."""
    base = _server_dir(stack, name)
    data_dir = base / "data"
    _check_socket_path(data_dir)
    data_dir.mkdir(mode=0o700)
    _chown(data_dir)
    conninfo = (
        f"host=127.0.0.1 port={primary.port} user={REPLICATION_ROLE} "
        f"passfile={_passfile(stack)} application_name={name}"
    )
    _run_as_postgres(
        [str(pg_bin_dir() / "pg_basebackup"), "-D", str(data_dir), "-d", conninfo, "-R",
         "-X", "stream", "-c", "fast", "--no-sync"],
        cwd=base,
        timeout=timeout,
    )  # fmt: skip
    replica = PgServer(
        name=name,
        port=port or free_port(),
        data_dir=data_dir,
        process=_new_process(stack, name, data_dir, base),
        monitor_password=primary.monitor_password,
        primary=primary,
        settings=dict(settings or {}),
    )
    _write_settings(replica)
    replica.process.start()
    replica.wait_ready(timeout)
    if wait_streaming:
        replica.wait_streaming(timeout)
    return replica


def _server_dir(stack: Stack, name: str) -> Path:
    if not name.replace("-", "").replace("_", "").isalnum():
        raise StackError(f"server name {name!r}: use letters, digits, '-' and '_'")
    base = stack.root / "pg" / name
    if base.exists():
        raise StackError(f"a PostgreSQL server named {name} already exists in this stack")
    return stack.directory("pg", name, owner=OS_USER)


def _check_socket_path(data_dir: Path) -> None:
    if len(str(data_dir / ".s.PGSQL.65535")) > MAX_SOCKET_PATH:
        raise StackError(f"stack path too long for a unix socket: {data_dir}; use a shorter Stack base")


def _new_process(
    stack: Stack, name: str, data_dir: Path, cwd: Path, launcher: Sequence[str] = ()
) -> PgProcess:
    argv = [str(pg_bin_dir() / "postgres"), "-D", str(data_dir)]
    if launcher:  # the launcher needs root: setpriv switches to postgres after it (and execs: same pid)
        as_postgres = ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups"]
        argv = [*launcher, *as_postgres, *argv]
    proc = PgProcess(
        name, argv, log_path=stack.path("logs", f"{name}.log"), cwd=cwd, user=None if launcher else OS_USER
    )
    stack.processes.append(proc)
    return proc


def _write_settings(server: PgServer) -> None:
    values = {
        **BASE_SETTINGS,
        "port": str(server.port),
        "unix_socket_directories": str(server.socket_dir),
        **server.settings,
    }
    lines = [f"{key} = '{_conf_quote(value)}'" for key, value in values.items()]
    path = server.data_dir / "tierwatch.conf"
    path.write_text("# written by tierwatch_lab.stack.postgres\n" + "\n".join(lines) + "\n")
    _chown(path)


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")


def _create_roles(server: PgServer, stack: Stack) -> None:
    replication_password = secrets.token_urlsafe(18)
    with server.connect() as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                pgsql.Identifier(MONITOR_ROLE), pgsql.Literal(server.monitor_password)
            )
        )
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                pgsql.Identifier(REPLICATION_ROLE), pgsql.Literal(replication_password)
            )
        )
        for function in REWIND_FUNCTIONS:  # pg_rewind may log in as the replication role
            conn.execute(
                pgsql.SQL("GRANT EXECUTE ON FUNCTION pg_catalog.{} TO {}").format(
                    pgsql.SQL(function), pgsql.Identifier(REPLICATION_ROLE)
                )
            )
    passfile = _passfile(stack)
    with open(passfile, "a") as out:
        # any port: a replica re-pointed after a failover logs in to whichever server is primary
        out.write(f"127.0.0.1:*:*:{REPLICATION_ROLE}:{replication_password}\n")


REWIND_FUNCTIONS = (
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
)


def rejoin_commands(server: PgServer, stack: Stack) -> dict[str, list[str]]:
    """The pg_rejoin commands of a lab server (config ``rejoin_commands.<name>``): pg_ctl stop,
    pg_rewind from the new primary as the replication role (``-R``: start as its standby), pg_ctl
    start with this server's port and socket directory (pg_rewind copied the source's settings file),
    listen addresses if it has its own, under its launcher (e.g. in its network namespace)."""
    as_postgres = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
    pg_ctl = [*as_postgres, str(pg_bin_dir() / "pg_ctl"), "-D", str(server.data_dir)]
    source = (
        f"host={{primary_host}} port={{primary_port}} user={REPLICATION_ROLE} passfile={_passfile(stack)} "
        f"dbname=postgres application_name={server.name}"
    )
    options = f"-c port={server.port} -c unix_socket_directories={server.socket_dir}"
    if "listen_addresses" in server.settings:  # pg_rewind brought the source's
        options += f" -c listen_addresses={server.settings['listen_addresses']}"
    stack.on_close(lambda: _stop_rejoined(pg_ctl, server))
    return {
        "stop": [*pg_ctl, "stop", "-m", "fast", "-w"],
        "rewind": [*as_postgres, str(pg_bin_dir() / "pg_rewind"), "-D", str(server.data_dir),
                   "--source-server", source, "-R"],
        "start": [*server.launcher, *pg_ctl, "start", "-w", "-l", str(server.socket_dir / "rejoined.log"),
                  "-o", options],
    }  # fmt: skip


def _stop_rejoined(pg_ctl: list[str], server: PgServer) -> None:
    """Stop the server if pg_ctl started it (after a rejoin), outside the stack's own process."""
    if (server.data_dir / "postmaster.pid").exists() and not server.process.running():
        subprocess.run([*pg_ctl, "stop", "-m", "immediate"], capture_output=True, timeout=30, check=False)


ADMIN_ROLE = "tierwatch_admin"


def create_admin_role(primary: PgServer, name: str = ADMIN_ROLE) -> str:
    """Create the recovery service's role on ``primary`` (replicated to the replicas): a password
    login allowed only what promotion needs (pg_promote, ALTER SYSTEM of primary_conninfo, reload, a
    check table) and pg_monitor. Returns its password."""
    password = secrets.token_urlsafe(18)
    role = pgsql.Identifier(name)
    statements = [
        pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
            role, pgsql.Literal(password)
        ),
        pgsql.SQL("GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {}").format(role),
        pgsql.SQL("GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {}").format(role),
        pgsql.SQL("GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO {}").format(role),
        pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(role),
        pgsql.SQL("GRANT pg_checkpoint TO {}").format(role),  # pg_rejoin: before pg_rewind
    ]
    with primary.connect() as conn:
        for statement in statements:
            conn.execute(statement)
    return password


def create_app_role(primary: PgServer, name: str) -> str:
    """Create an application role that can create tables and write (the demo's writers). Returns its
    password."""
    password = secrets.token_urlsafe(18)
    with primary.connect() as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                pgsql.Identifier(name), pgsql.Literal(password)
            )
        )
        conn.execute(pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(pgsql.Identifier(name)))
    return password


def _passfile(stack: Stack) -> Path:
    path = stack.directory("pg", owner=OS_USER) / "replication.pgpass"
    if not path.exists():
        path.touch(mode=0o600)
        _chown(path)
    return path


def _archive_control(stack: Stack, base: Path) -> ArchiveControl:
    archive_dir = stack.directory("pg", base.name, "archive", owner=OS_USER)
    control = ArchiveControl(
        script=base / "archive.sh", archive_dir=archive_dir, fail_flag=base / "archive.fail"
    )
    control.script.write_text(
        "#!/bin/sh\n"
        "# archive_command of a tierwatch stack server: fails while the flag file exists\n"
        f"[ -e '{control.fail_flag}' ] && exit 1\n"
        f'test ! -f \'{archive_dir}\'/"$2" && cp "$1" \'{archive_dir}\'/"$2"\n'
    )
    control.script.chmod(0o755)
    return control


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(OS_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _run_as_postgres(argv: Sequence[str], *, cwd: Path, timeout: float) -> None:
    user = OS_USER if os.geteuid() == 0 else None
    try:
        done = subprocess.run(
            argv, cwd=cwd, user=user, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise StackError(f"{Path(argv[0]).name} did not finish within {timeout:g}s") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise StackError(f"{Path(argv[0]).name} failed with code {done.returncode}:\n{tail}")


def _poll(process: ManagedProcess, condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail at once (with the server log) if the server exited."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        process.check_alive()
        try:
            if condition():
                return
        except psycopg.Error as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last).__name__})" if last else ""
            raise StackError(f"timed out after {timeout:g}s waiting for {what}{detail}\n{process.log_tail()}")
        time.sleep(0.05)
