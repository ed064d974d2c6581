"""The demo's backups: pgBackRest for the PostgreSQL primary, RDB snapshots of Redis, and the jobs a
cron table or systemd timers would run on a real host, on a compressed schedule.

- pg-1 archives its WAL with ``pgbackrest archive-push`` into a repository under ``region-failover/``
  (standing for the other region's backup store); a full backup is taken at start;
- :class:`BackupSchedule` then runs, in a thread of the demo: an incremental backup every
  ``INCR_EVERY`` (a differential one every ``DIFF_EVERY``), ``tierwatch redis-snapshot`` every
  ``SNAPSHOT_EVERY`` and ``tierwatch restore-test`` every ``RESTORE_TEST_EVERY`` (the product's own
  commands, as their systemd timers would run them), each bounded in time and logged to the stack's
  logs; node_exporter's textfile collector publishes the batch commands' results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stack import Stack
from .stack.pgbackrest import PgBackRest
from .stack.postgres import OS_USER, PgServer

STANZA = "main"
HEARTBEAT_TABLE = "public.tierwatch_heartbeat"
HEARTBEAT_KEY = "tierwatch:heartbeat"
PG_BACKUP, REDIS_BACKUP = "main-db", "cache-main"  # the backup sets (label ``backup``)
READ_INTERVAL = "10s"  # how often the exporter reads pgBackRest's report (1m by default)
INCR_EVERY, DIFF_EVERY = 120.0, 600.0
SNAPSHOT_EVERY = 60.0
RESTORE_TEST_EVERY = 300.0
FIRST_RESTORE_TEST = 20.0  # seconds after start: the dashboard has a result soon
JOB_TIMEOUT = 600.0
STOP_GRACE = 30.0  # seconds a stopped job has to clean up before SIGKILL


@dataclass(frozen=True)
class DemoBackups:
    """Where the demo's backups live and how the chain's config refers to them."""

    backrest: PgBackRest
    textfile_dir: Path
    scratch_dir: Path
    redis_dir: Path
    audit_log: Path

    def exporter_backup(self) -> dict[str, Any]:
        """``clusters[main-db].backup``: pgBackRest's report, read every READ_INTERVAL, and the heartbeat."""
        pgbackrest: dict[str, Any] = {
            "stanza": self.backrest.stanza,
            "config": str(self.backrest.config),
            "interval": READ_INTERVAL,
            "timeout": "8s",
        }
        if os.geteuid() == 0:
            pgbackrest["os_user"] = OS_USER
        return {"pgbackrest": pgbackrest, "heartbeat_table": HEARTBEAT_TABLE}

    def section(self) -> dict[str, Any]:
        """The config's ``backups:`` section: what ``tierwatch restore-test`` and ``redis-snapshot`` do."""
        pgbackrest: dict[str, Any] = {"stanza": self.backrest.stanza, "config": str(self.backrest.config)}
        if os.geteuid() == 0:
            pgbackrest["os_user"] = OS_USER
        return {
            "textfile_dir": str(self.textfile_dir),
            "scratch_dir": str(self.scratch_dir),
            "audit_log": str(self.audit_log),
            "sets": [
                {
                    "name": PG_BACKUP,
                    "cluster": "main-db",
                    "pgbackrest": pgbackrest,
                    "verify": [
                        {"name": "heartbeat", "query": f"SELECT count(*) FROM {HEARTBEAT_TABLE}",
                         "equals": 1},
                        {"name": "app-role", "query": "SELECT count(*) FROM pg_roles WHERE rolname = 'app'",
                         "equals": 1},
                    ],
                    "heartbeat_table": HEARTBEAT_TABLE,
                    "timeout": "5m",
                },
                {
                    "name": REDIS_BACKUP,
                    "cluster": "cache-main",
                    "redis": {"directory": str(self.redis_dir), "keep": 5},
                    "verify_keys": [HEARTBEAT_KEY],
                    "heartbeat_key": HEARTBEAT_KEY,
                    "timeout": "2m",
                },
            ],
        }  # fmt: skip


def prepare(stack: Stack, backrest: PgBackRest) -> DemoBackups:
    """The directories of the demo's backups (the Redis snapshots beside pgBackRest's repository)."""
    return DemoBackups(
        backrest=backrest,
        textfile_dir=stack.directory("textfile"),
        scratch_dir=stack.directory("restore-scratch"),
        redis_dir=stack.directory("region-failover", "redis-backups"),
        audit_log=stack.path("backups-audit.jsonl"),
    )


def create_heartbeat_table(primary: PgServer, monitor_role: str = "tierwatch") -> None:
    """The table the exporter's heartbeat writes (id 1, now()), its row, and the grant it needs."""
    primary.sql(f"CREATE TABLE {HEARTBEAT_TABLE} (id integer PRIMARY KEY, ts timestamptz NOT NULL)")
    primary.sql(f"INSERT INTO {HEARTBEAT_TABLE} (id, ts) VALUES (1, now())")
    primary.sql(f"GRANT SELECT, INSERT, UPDATE ON {HEARTBEAT_TABLE} TO {monitor_role}")


def tierwatch_command(*args: str) -> list[str]:
    """The product's command line, run by this interpreter (the demo's virtualenv)."""
    return [sys.executable, "-m", "tierwatch", *args]


@dataclass
class Job:
    """One scheduled job: its command line, how often, when next, as whom (None: as the demo)."""

    name: str
    every: float
    argv: Callable[[], list[str]]
    due: float
    user: str | None = None
    runs: int = 0
    failures: int = 0


@dataclass
class BackupSchedule:
    """The demo's backup jobs, one at a time, in a thread; each job's output goes to ``log``.
    ``stop`` ends the job in progress with SIGTERM (the batch commands clean up on it), then SIGKILL."""

    jobs: list[Job]
    log: Path
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _current: subprocess.Popen[bytes] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="demo-backups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            current = self._current
        if current is not None and current.poll() is None:
            current.terminate()
            try:
                current.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                current.kill()
        if self._thread is not None:
            self._thread.join(STOP_GRACE)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if self._stop.is_set() or now < job.due:
                    continue
                job.due = now + job.every
                job.runs += 1
                if self._run(job) != 0:
                    job.failures += 1
            self._stop.wait(1.0)

    def _run(self, job: Job) -> int:
        """Run ``job`` with its output appended to the log; its exit code (-1: timed out or stopped)."""
        argv = job.argv()
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {job.name}\n".encode())
            out.flush()
            with self._lock:
                if self._stop.is_set():
                    return -1
                self._current = subprocess.Popen(
                    argv, stdout=out, stderr=out, user=job.user, cwd=self.log.parent
                )
            try:
                return self._current.wait(JOB_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._current.kill()
                self._current.wait()
                return -1


def start_schedule(
    stack: Stack, backups: DemoBackups, config: Path, first_backup_in: float = INCR_EVERY
) -> BackupSchedule:
    """Start the demo's backup jobs (``config``: the chain's exporter config, with ``backups:``); stopped
    before the stack's servers are (``Stack.on_close`` runs after them, so the demo stops it first)."""
    now = time.monotonic()
    taken = {"backups": 0}

    def pg_backup() -> list[str]:
        taken["backups"] += 1
        kind = "diff" if taken["backups"] % round(DIFF_EVERY / INCR_EVERY) == 0 else "incr"
        return backups.backrest.command(f"--type={kind}", "backup")

    as_postgres = OS_USER if os.geteuid() == 0 else None
    config_arg = ["--config", str(config)]
    jobs = [
        Job("pgbackrest backup", INCR_EVERY, pg_backup, now + first_backup_in, user=as_postgres),
        Job("redis-snapshot", SNAPSHOT_EVERY, lambda: tierwatch_command("redis-snapshot", *config_arg), now),
        Job("restore-test", RESTORE_TEST_EVERY, lambda: tierwatch_command("restore-test", *config_arg),
            now + FIRST_RESTORE_TEST),
    ]  # fmt: skip
    schedule = BackupSchedule(jobs, stack.path("logs", "backup-jobs.log"))
    stack.on_close(schedule.stop)
    schedule.start()
    return schedule
