"""``tierwatch restore-test`` against a real pgBackRest repository and PostgreSQL: a verified restore
with its metrics and audit line, a corrupted backup, a killed run (its server dies with it and the next
run removes the leftover), and the disk-space refusal (a small real filesystem, and min_free_bytes)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.pgbackrest import PgBackRest, archive_now, start_backed_up_primary
from tierwatch_lab.stack.postgres import PgServer

from helpers import CliProcess, metric_value, processes_mentioning, run_cli

OS_USER = {"os_user": "postgres"} if os.geteuid() == 0 else {}  # as root, pgBackRest and postgres run as it

ROWS = 250
TEST_DIRS = itertools.count(1)


@dataclass
class Backed:
    """The module's primary and its repository, and this test's own directories (``root``: textfile,
    scratch, audit trail), so that tests share the servers and nothing else."""

    stack: Stack
    primary: PgServer
    backrest: PgBackRest
    root: Path

    def config(self, scratch: Path | None = None, **set_options: Any) -> Path:
        """A config with one pgbackrest set ``main-db`` (options override the set's keys)."""
        entry: dict[str, Any] = {
            "name": "main-db",
            "cluster": "main-db",
            "pgbackrest": {
                "stanza": self.backrest.stanza,
                "config": str(self.backrest.config),
                **OS_USER,
            },
            "verify": [{"name": "orders", "query": "SELECT count(*) FROM orders", "min": ROWS}],
            "heartbeat_table": "public.tierwatch_heartbeat",
            "timeout": "2m",
            **set_options,
        }
        data = {
            "clusters": [
                {
                    "name": "main-db",
                    "tier": "postgres",
                    "targets": [
                        {"name": "pg-1", "region": "primary", "url": self.primary.dsn_without_password}
                    ],
                }
            ],
            "backups": {
                "textfile_dir": str(self.root / "textfile"),
                "scratch_dir": str(scratch or self.root / "scratch"),
                "audit_log": str(self.root / "backups-audit.jsonl"),
                "sets": [entry],
            },
        }
        path = self.root / f"tierwatch-{time.monotonic_ns()}.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    @property
    def metrics_file(self) -> Path:
        return self.root / "textfile" / "tierwatch_restore_test_main-db.prom"

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics_file.read_text(), f"tierwatch_restore_test_{name}", backup="main-db")

    def audit(self) -> list[dict[str, Any]]:
        path = self.root / "backups-audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def write_heartbeat(primary: PgServer) -> float:
    """Write the heartbeat row as the exporter does; its time (Unix seconds)."""
    primary.sql(
        "INSERT INTO public.tierwatch_heartbeat (id, ts) VALUES (1, now()) "
        "ON CONFLICT (id) DO UPDATE SET ts = excluded.ts"
    )
    return float(primary.scalar("SELECT extract(epoch FROM ts) FROM public.tierwatch_heartbeat"))


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Stack, PgServer, PgBackRest]]:
    """One primary with its full backup for the module (a test that corrupts a backup takes a new one)."""
    with Stack() as stack:
        primary, backrest = start_backed_up_primary(stack, "pg1", full_backup=False)
        primary.sql("CREATE TABLE orders (id integer PRIMARY KEY, note text)")
        primary.sql(f"INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, {ROWS}) g")
        primary.sql(
            "CREATE TABLE public.tierwatch_heartbeat (id integer PRIMARY KEY, ts timestamptz NOT NULL)"
        )
        write_heartbeat(primary)
        backrest.backup("full")
        yield stack, primary, backrest


@pytest.fixture
def backed(cluster: tuple[Stack, PgServer, PgBackRest]) -> Backed:
    stack = cluster[0]  # inside the stack (0755), so the OS user reaches its run directory below scratch;
    # short: the throwaway server's socket lives in the run directory (107 bytes at most)
    return Backed(*cluster, root=stack.directory("t", str(next(TEST_DIRS))))


def run_dirs(scratch: Path) -> list[str]:
    return sorted(p.name for p in scratch.iterdir() if p.name.startswith("run-")) if scratch.exists() else []


@pytest.mark.slow
def test_restore_test_verifies_and_measures_rto_and_rpo(backed: Backed) -> None:
    heartbeat = write_heartbeat(backed.primary)
    archive_now(backed.primary)
    before = time.time()
    done = run_cli("restore-test", "--config", str(backed.config()), timeout=180)
    after = time.time()
    assert done.returncode == 0, done.stdout + done.stderr

    assert backed.metric("success") == 1
    rto, rpo = backed.metric("rto_seconds"), backed.metric("rpo_seconds")
    assert rto is not None and 0 < rto < after - before
    # RPO: restore start minus the restored heartbeat, so at least the wait until the run started
    assert rpo is not None and before - heartbeat - 0.5 <= rpo <= after - heartbeat
    assert (backed.metric("restored_bytes") or 0) > 1_000_000
    assert before <= (backed.metric("last_success_timestamp_seconds") or 0) <= after
    assert backed.metric("last_run_timestamp_seconds") == backed.metric("last_success_timestamp_seconds")
    text = backed.metrics_file.read_text()
    assert (
        "# TYPE tierwatch_restore_test_success gauge" in text
        and "# HELP tierwatch_restore_test_rpo_seconds" in text
    )

    (record,) = backed.audit()
    assert record["event"] == "restore_test" and record["outcome"] == "success" and record["stage"] is None
    assert record["rto_seconds"] == pytest.approx(rto, abs=0.001) and record["bytes"] > 0
    assert "SELECT" not in json.dumps(record)  # no query text
    assert run_dirs(backed.root / "scratch") == []
    print(f"measured: RTO {rto:.2f}s, RPO {rpo:.2f}s, {backed.metric('restored_bytes'):.0f} bytes")


@pytest.mark.slow
def test_a_corrupted_backup_fails_at_restore_and_keeps_the_last_success(backed: Backed) -> None:
    config = backed.config()
    assert run_cli("restore-test", "--config", str(config), timeout=180).returncode == 0
    last_success, rto = backed.metric("last_success_timestamp_seconds"), backed.metric("rto_seconds")

    # flip a byte in the middle of the repository's copy of the orders table
    relation = backed.primary.scalar("SELECT pg_relation_filepath('orders')")
    label = backed.backrest.info()["backup"][-1]["label"]
    (victim,) = [
        p for p in backed.backrest.backup_files(label) if p.name.split(".")[0] == Path(relation).name
    ]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    done = run_cli("restore-test", "--config", str(config), timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED at stage restore" in done.stderr
    assert backed.metric("success") == 0
    assert backed.metric("last_success_timestamp_seconds") == last_success  # kept across the failure
    assert backed.metric("rto_seconds") == rto
    assert (backed.metric("last_run_timestamp_seconds") or 0) > (last_success or 0)
    record = backed.audit()[-1]
    assert record["outcome"] == "failure" and record["stage"] == "restore"
    assert run_dirs(backed.root / "scratch") == []
    backed.backrest.backup("full")  # a sound newest backup again for the module's other tests


def _postmasters_below(scratch: Path) -> list[int]:
    return [pid for pid in processes_mentioning(f"{scratch}/run-main-db-") if _is_postgres(pid)]


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


@pytest.mark.slow
def test_kill_9_mid_run_takes_the_server_down_and_the_next_run_cleans_up(backed: Backed) -> None:
    scratch = backed.root / "scratch"
    slow = backed.config(
        verify=[{"name": "slow", "query": "SELECT count(*) FROM orders, pg_sleep(60)", "min": ROWS}]
    )
    cli = CliProcess("restore-test", "--config", str(slow))
    try:
        postmasters = wait_for(lambda: _postmasters_below(scratch), 120, "the throwaway server to start")
        wait_for(lambda: backed.metrics_file.exists() is False and _verifying(postmasters[0]), 60, "verify")
        os.kill(cli.proc.pid, signal.SIGKILL)
        cli.proc.wait(10)
        wait_for(lambda: not _postmasters_below(scratch), 15, "the throwaway server to die with its parent")
    finally:
        if cli.proc.poll() is None:
            os.killpg(cli.proc.pid, signal.SIGKILL)
            cli.proc.wait(10)
        for pid in _postmasters_below(scratch):
            os.kill(pid, signal.SIGKILL)
    (leftover,) = run_dirs(scratch)

    done = run_cli("restore-test", "--config", str(backed.config()), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run_dirs(scratch) == [] and leftover not in os.listdir(scratch)
    assert backed.metric("success") == 1


def _verifying(postmaster: int) -> bool:
    """Whether a backend of ``postmaster`` runs the slow verify query (pg_sleep)."""
    for pid in processes_mentioning("postgres"):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if int(stat[1]) == postmaster and b"SELECT" in cmdline:
            return True
    return False


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 5 MiB tmpfs, unmounted at the end (mounting needs root, as the suite's setup does: a machine
    where it cannot mount fails this test rather than skipping what it proves)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a 5 MiB tmpfs: {done.stderr.decode().strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["small filesystem", "min_free_bytes"])
def test_not_enough_disk_is_refused_before_restoring(
    backed: Backed, how: str, request: pytest.FixtureRequest
) -> None:
    if how == "small filesystem":
        scratch = request.getfixturevalue("small_filesystem") / "scratch"
        config = backed.config(scratch)
    else:
        scratch = backed.root / "scratch"
        config = backed.config(min_free_bytes=10**18)
    done = run_cli("restore-test", "--config", str(config), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED at stage disk: not enough free space" in done.stderr
    assert backed.metric("success") == 0 and backed.metric("last_success_timestamp_seconds") == 0
    assert backed.audit()[-1]["stage"] == "disk"
    assert run_dirs(scratch) == []


def test_unknown_set_and_missing_section_are_refused(
    backed: Backed, write_config: Callable[..., Path]
) -> None:
    done = run_cli("restore-test", "--config", str(backed.config()), "--backup", "nope")
    assert done.returncode == 2 and "no backup set named 'nope'" in done.stderr
    bare = write_config({"clusters": [{"name": "web", "tier": "app", "targets": [
        {"name": "a", "region": "primary", "url": "http://127.0.0.1:1/"}]}]})  # fmt: skip
    done = run_cli("restore-test", "--config", str(bare))
    assert done.returncode == 2 and "has no backups: section" in done.stderr


def test_a_scratch_dir_too_long_for_a_unix_socket_is_refused_before_restoring(backed: Backed) -> None:
    """The throwaway server's socket lives in the run directory: a path past sun_path's 107 bytes used to
    restore the whole backup, then fail at start with no socket (seen with a long test directory)."""
    scratch = backed.root / ("s" * 60) / ("t" * 60)
    done = run_cli("restore-test", "--config", str(backed.config(scratch)), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED at stage prepare" in done.stderr and "too long for a unix socket" in done.stderr
    assert backed.audit()[-1]["stage"] == "prepare"
    assert run_dirs(scratch) == []


def test_a_result_that_cannot_be_written_fails_the_run(backed: Backed) -> None:
    """A full disk or a broken textfile directory is not a success: the restore verified, but nothing
    would show it, so the command exits 1 (the timer's unit fails) and says why."""
    blocked = backed.root / "textfile-is-a-file"
    blocked.write_text("")
    config = backed.config()
    data = yaml.safe_load(config.read_text())
    data["backups"]["textfile_dir"] = str(blocked)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    done = run_cli("restore-test", "--config", str(config), timeout=180)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "verified" in done.stdout and "cannot write" in done.stderr
    assert backed.audit()[-1]["outcome"] == "success"  # the restore itself passed, and says so
