"""The drills of the faults failover cannot fix, on a demo stack with backups (demo_backups.py):

- ``bad-write``: an operator's ``DELETE`` without ``WHERE`` while the app writes; every replica and the
  DR replica lose the rows within a second (replication is faithful); ``tierwatch pitr`` restores the
  cluster to just before it into a new instance beside production, and the drill counts the rows
  acknowledged before the mistake that came back;
- ``backup-corruption``: one byte flipped in a file of the newest backup; the next restore test fails
  and RestoreTestFailed reaches Alertmanager through the real Prometheus;
- ``wal-gap``: one archived WAL segment removed from the repository; the exporter's reading of the
  repository finds the hole and PostgresWalArchiveGap reaches Alertmanager before any restore needs it.

Each stops the demo's backup schedule first, so that only the drill's own restore runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .demo_backups import PG_BACKUP, DemoBackups, tierwatch_command
from .demo_stack import DemoStack
from .drill_kit import DrillResult, PgWrites, Writer, app_pg_connection, pg_primaries, wait_until
from .stack import StackError, free_port, wait_for
from .stack.pgbackrest import archive_now

WRITES_TABLE = "drill_writes"
REPLICA_WAIT = 10.0  # seconds the replicas get to apply the mistake


class AckedPgWrites(PgWrites):
    """PgWrites that remember when each write was acknowledged (its commit returned)."""

    def __init__(self, port: int, password: str):
        super().__init__(port, password)
        self.acked_at: dict[int, float] = {}

    def __call__(self, n: int) -> bool:
        ok = super().__call__(n)
        if ok:
            self.acked_at[n] = time.time()
        return ok


def _backups(demo: DemoStack) -> DemoBackups:
    if demo.backups is None:
        raise StackError("this drill needs a demo built with backups (DemoOptions.backups)")
    if demo.backup_schedule is not None:
        demo.backup_schedule.stop()  # the drill runs its own restore, alone
    return demo.backups


def _config(demo: DemoStack) -> Path:
    assert demo.chain is not None
    return demo.chain.exporter.config


def _run(argv: list[str], timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _alert_in_alertmanager(demo: DemoStack, name: str) -> bool:
    assert demo.chain is not None
    return any(
        alert["labels"].get("alertname") == name and alert["status"]["state"] == "active"
        for alert in demo.chain.alertmanager.alerts()
    )


def _wait_alert(demo: DemoStack, result: DrillResult, name: str, deadline: float, **labels: str) -> bool:
    """Firing in Prometheus, then delivered to Alertmanager: both times on the timeline."""
    assert demo.chain is not None
    prometheus = demo.chain.prometheus
    if not wait_until(lambda: prometheus.alert_state(name, **labels) == "firing", deadline):
        return False
    result.add(time.time(), f"alert: {name} firing in Prometheus")
    if not wait_until(lambda: _alert_in_alertmanager(demo, name), deadline):
        return False
    result.add(time.time(), f"alert: {name} active in Alertmanager")
    return True


# --- bad-write -----------------------------------------------------------------------------------


def drill_bad_write(demo: DemoStack, deadline: float) -> DrillResult:
    backups = _backups(demo)
    name = pg_primaries(demo)[0]
    primary = demo.pg[name]
    primary.sql(
        f"CREATE TABLE IF NOT EXISTS {WRITES_TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    primary.sql(f"GRANT INSERT, SELECT ON {WRITES_TABLE} TO app")
    writes = AckedPgWrites(demo.pg_write.port, demo.pg_app_password)
    writer = Writer(writes)
    writer.start()
    wait_for(lambda: len(writer.acked) > 100, 30, "writes flowing")
    with primary.connect() as conn:  # the operator's session: one transaction, its start is t0
        # t0 first, then the server's clock (the same host's): a write acknowledged before t0 committed
        # before t0_db, the recovery target, and must come back
        t0 = time.time()
        t0_db = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute(f"DELETE FROM {WRITES_TABLE}")  # no WHERE: the mistake
        conn.commit()
    result = DrillResult("bad-write", t0)
    result.add(t0, f"failure: DELETE FROM {WRITES_TABLE} without WHERE on {name} (the app goes on writing)")
    time.sleep(1.0)
    writer.stop()
    result.keep_series({"postgres": [writer]})
    before = sorted(n for n, at in writes.acked_at.items() if at < t0)
    _replicas_emptied(demo, name, before[-1], result)
    segment = archive_now(primary)
    result.add(time.time(), f"archive: WAL up to {segment} in the repository (archive_timeout would do it)")
    recovered, rto, port = _pitr(demo, backups, t0_db, result)
    result.acked = len(before)
    result.lost = len(set(before) - recovered)
    result.primaries = {"postgres": len(pg_primaries(demo))}
    result.faults = {
        "acknowledged_before_t0": len(before),
        "recovered": len(recovered & set(before)),
        "rto_seconds": round(rto, 2),
        "pitr_port": port,
    }
    result.recovered = result.lost == 0 and bool(before)
    result.detail = (
        f"{len(recovered & set(before))} of {len(before)} rows acknowledged before the DELETE restored "
        f"in {rto:.1f} s; every replica had lost them, so no failover could have helped"
    )
    return result


def _replicas_emptied(demo: DemoStack, primary: str, last_before: int, result: DrillResult) -> None:
    """Wait until every other server has applied the DELETE (none has the rows any more)."""
    for name, server in demo.pg.items():
        if name == primary:
            continue

        def gone(server: Any = server) -> bool:
            return (
                int(server.scalar(f"SELECT count(*) FROM {WRITES_TABLE} WHERE id <= %s", [last_before])) == 0
            )

        if wait_until(gone, time.time() + REPLICA_WAIT):
            role = "DR replica" if name == "pg-dr" else "replica"
            result.add(time.time(), f"replicated: {role} {name} has lost the rows too")
        else:
            result.add(time.time(), f"replicated: {name} still had the rows after {REPLICA_WAIT:g} s")


def _pitr(
    demo: DemoStack, backups: DemoBackups, target: datetime, result: DrillResult
) -> tuple[set[int], float, int]:
    """``tierwatch pitr`` to ``target`` into a new instance; the ids it has, the seconds from the
    command's start to the rows read back, its port. The instance is stopped with the stack."""
    data_dir = demo.stack.directory("pitr") / "data"
    port = free_port()
    stamp = target.astimezone(UTC).isoformat()
    started = time.time()
    result.add(started, f"pitr: tierwatch pitr --backup {PG_BACKUP} --target-time {stamp}")
    demo.stack.on_close(lambda: _stop_instance(data_dir))
    options = [
        "--backup",
        PG_BACKUP,
        "--target-time",
        stamp,
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
    ]
    done = _run(tierwatch_command("pitr", "--config", str(_config(demo)), *options))
    if done.returncode != 0:
        raise StackError(
            f"tierwatch pitr failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    with app_pg_connection(port, demo.pg_app_password) as conn:
        ids = {int(row[0]) for row in conn.execute(f"SELECT id FROM {WRITES_TABLE}")}
    rto = time.time() - started
    result.add(started + rto, f"pitr: new instance on port {port} answers with {len(ids)} rows")
    return ids, rto, port


def _stop_instance(data_dir: Path) -> None:
    """Stop a PITR instance left running (fast shutdown of its postmaster)."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    wait_until(lambda: not pid_file.exists(), time.time() + 15)


# --- region-loss: the restore from the failover region's repository --------------------------------


def restore_from_backups(demo: DemoStack, result: DrillResult) -> dict[str, Any]:
    """Run the restore test of main-db (its repository stands in the failover region, which survived)
    and return its figures as the textfile collector publishes them (``rpo_seconds``, ``rto_seconds``,
    ``success``) with the command's exit code. ``rpo_at_failure_seconds``: the data lost had the region
    been restored from backups, the failure's time minus the newest restored write (the command's RPO
    counts from its own start; its start-up, a fraction of a second, is counted as loss)."""
    backups = _backups(demo)
    started = time.time()
    done = _run(tierwatch_command("restore-test", "--config", str(_config(demo)), "--backup", PG_BACKUP))
    figures: dict[str, Any] = {"exit": done.returncode, **restore_figures(backups, PG_BACKUP)}
    if done.returncode != 0:
        figures["error"] = (done.stderr.strip().splitlines() or [""])[-1][:300]
    elif "rpo_seconds" in figures:
        figures["rpo_at_failure_seconds"] = round(figures["rpo_seconds"] - (started - result.failed_at), 2)
    result.add(
        time.time(),
        f"restore test from the failover region's repository: exit {done.returncode}, "
        f"RTO {_seconds(figures.get('rto_seconds'))}, RPO at the failure "
        f"{_seconds(figures.get('rpo_at_failure_seconds'))}",
    )
    return figures


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


def restore_figures(backups: DemoBackups, name: str) -> dict[str, float]:
    """``tierwatch_restore_test_*`` values of backup set ``name`` in the textfile directory."""
    figures: dict[str, float] = {}
    prefix = "tierwatch_restore_test_"
    for path in backups.textfile_dir.glob("*.prom"):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith(prefix) or f'backup="{name}"' not in line:
                continue
            metric, _, value = line.rpartition(" ")
            try:
                figures[metric.split("{", 1)[0][len(prefix) :]] = float(value)
            except ValueError:
                continue
    return figures


# --- backup-corruption ---------------------------------------------------------------------------


def drill_backup_corruption(demo: DemoStack, deadline: float) -> DrillResult:
    backups = _backups(demo)
    info = backups.backrest.info()
    label = info["backup"][-1]["label"]
    target = _biggest_relation_file(backups, label)
    result = DrillResult("backup-corruption", time.time())
    _flip_byte(target)
    result.add(result.failed_at, f"failure: one byte flipped in {target.name} of backup {label}")
    done = _run(tierwatch_command("restore-test", "--config", str(_config(demo)), "--backup", PG_BACKUP))
    result.add(time.time(), f"restore test: exit code {done.returncode}")
    audit = _last_audit(backups, PG_BACKUP)
    if audit:
        result.add(
            time.time(), f"restore test: audit says {audit.get('outcome')} at stage {audit.get('stage')}"
        )
    result.recovered = done.returncode != 0 and _wait_alert(
        demo, result, "RestoreTestFailed", deadline, cluster="main-db"
    )
    result.faults = {"restore_test_exit": done.returncode, "audit": audit}
    result.detail = "the corrupted backup was caught by a restore test, not by the day it was needed"
    return result


def _biggest_relation_file(backups: DemoBackups, label: str) -> Path:
    files = [path for path in backups.backrest.backup_files(label) if "/base/" in str(path)]
    if not files:
        raise StackError(f"backup {label} has no relation files to corrupt")
    return max(files, key=lambda path: path.stat().st_size)


def _flip_byte(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.seek(size // 2)
        byte = handle.read(1)
        handle.seek(size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _last_audit(backups: DemoBackups, name: str) -> dict[str, Any] | None:
    try:
        lines = backups.audit_log.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue
        if name in (record.get("backup"), record.get("set")):
            return record
    return None


# --- wal-gap -------------------------------------------------------------------------------------


def drill_wal_gap(demo: DemoStack, deadline: float) -> DrillResult:
    backups = _backups(demo)
    primary = demo.pg[pg_primaries(demo)[0]]
    for _ in range(3):  # a few closed segments after the newest backup's
        primary.sql("SELECT txid_current()")
        archive_now(primary)
    segments = backups.backrest.archive_segment_files()
    if len(segments) < 3:
        raise StackError(f"only {len(segments)} WAL segments archived; the drill needs 3")
    victim = segments[-2]  # not the newest: a hole, not a shorter archive
    audit_before = _audit_lines(backups)
    result = DrillResult("wal-gap", time.time())
    victim.unlink()
    result.add(
        result.failed_at, f"failure: archived WAL segment {victim.name[:24]} removed from the repository"
    )
    assert demo.chain is not None
    prometheus = demo.chain.prometheus
    gap_seen = wait_until(
        lambda: (
            (prometheus.value('max(tierwatch_backup_wal_archive_missing_segments{cluster="main-db"})') or 0)
            >= 1
        ),
        deadline,
    )
    if gap_seen:
        result.add(time.time(), "detected: the exporter's reading of the repository counts 1 missing segment")
    fired = gap_seen and _wait_alert(demo, result, "PostgresWalArchiveGap", deadline, cluster="main-db")
    restores = _audit_lines(backups) - audit_before
    result.recovered = fired and restores == 0
    result.faults = {"restores_attempted": restores}
    result.detail = (
        f"the hole was reported before any restore needed the segment (restores attempted: {restores})"
    )
    return result


def _audit_lines(backups: DemoBackups) -> int:
    try:
        return len(backups.audit_log.read_text().splitlines())
    except OSError:
        return 0


BACKUP_DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {
    "bad-write": drill_bad_write,
    "backup-corruption": drill_backup_corruption,
    "wal-gap": drill_wal_gap,
}
