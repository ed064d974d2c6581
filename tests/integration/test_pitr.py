"""``tierwatch pitr``: a point-in-time restore into a new instance brings back exactly the rows
committed before the target time, paused there and left running; and what it refuses."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.pgbackrest import PgBackRest, archive_now, start_backed_up_primary
from tierwatch_lab.stack.postgres import PgServer

from helpers import run_cli

OS_USER = {"os_user": "postgres"} if os.geteuid() == 0 else {}  # as root, pgBackRest and postgres run as it


def write_config(stack: Stack, primary: PgServer, backrest: PgBackRest) -> Path:
    data: dict[str, Any] = {
        "clusters": [
            {"name": "main-db", "tier": "postgres",
             "targets": [{"name": "pg-1", "region": "primary", "url": primary.dsn_without_password}]},
            {"name": "cache", "tier": "redis", "targets": [{"name": "r-1", "region": "primary",
                                                            "url": "redis://127.0.0.1:1"}]},
        ],
        "backups": {
            "textfile_dir": str(stack.root / "textfile"),
            "scratch_dir": str(stack.root / "scratch"),
            "audit_log": str(stack.root / "audit.jsonl"),
            "sets": [
                {"name": "main-db", "cluster": "main-db", "timeout": "2m",
                 "pgbackrest": {"stanza": backrest.stanza, "config": str(backrest.config),
                                **OS_USER}},
                {"name": "cache", "cluster": "cache", "redis": {"directory": str(stack.root / "rdb")}},
            ],
        },
    }  # fmt: skip
    path = stack.root / "tierwatch.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def stop_instance(data_dir: Path) -> None:
    """Fast shutdown of the instance pitr left running (what its instructions say, by signal)."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().splitlines()[0])
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the PITR instance to stop")


@pytest.fixture
def pitr_dir(stack: Stack) -> Iterator[Path]:
    path = stack.root / "pitr" / "data"
    path.parent.mkdir()
    try:
        yield path
    finally:
        stop_instance(path)


@pytest.mark.slow
def test_pitr_restores_exactly_the_rows_committed_before_the_target(stack: Stack, pitr_dir: Path) -> None:
    primary, backrest = start_backed_up_primary(stack, "pg1")
    primary.sql("CREATE TABLE events (id integer PRIMARY KEY)")
    primary.sql("INSERT INTO events VALUES (1), (2)")
    archive_now(primary)
    time.sleep(1.0)
    target = primary.scalar("SELECT now()")  # between the two writes, on the server's clock
    time.sleep(1.0)
    primary.sql("INSERT INTO events VALUES (3)")
    primary.sql("DELETE FROM events WHERE id = 1")  # the mistake PITR undoes
    archive_now(primary)

    port = free_port()
    done = run_cli(
        "pitr", "--config", str(write_config(stack, primary, backrest)), "--backup", "main-db",
        "--target-time", target.isoformat(), "--data-dir", str(pitr_dir), "--port", str(port), timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pg_wal_replay_resume()" in done.stdout and f"pg_ctl stop -D {pitr_dir}" in done.stdout

    with psycopg.connect(host=str(pitr_dir), port=port, user="postgres", dbname="postgres") as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]
        in_recovery, state = conn.execute(
            "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state()"
        ).fetchone()  # type: ignore[misc]
        archive_mode = conn.execute("SHOW archive_mode").fetchone()[0]  # type: ignore[index]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]  # type: ignore[index]
    assert ids == [1, 2]
    assert in_recovery is True and state == "paused"
    records = [json.loads(line) for line in (stack.root / "audit.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in records if r["event"] == "pitr"] == ["started", "running"]
    assert archive_mode == "off" and listen == "127.0.0.1"
    assert primary.scalar("SELECT array_agg(id ORDER BY id) FROM events") == [2, 3]  # production untouched

    # refusals: the same directory again (not empty), a port in use
    again = run_cli(
        "pitr", "--config", str(stack.root / "tierwatch.yml"), "--backup", "main-db",
        "--target-time", target.isoformat(), "--data-dir", str(pitr_dir), "--port", str(free_port()),
    )  # fmt: skip
    assert again.returncode == 1 and "is not an empty directory: refused" in again.stderr
    busy = run_cli(
        "pitr", "--config", str(stack.root / "tierwatch.yml"), "--backup", "main-db",
        "--target-time", target.isoformat(), "--data-dir", str(stack.root / "other"), "--port", str(port),
    )  # fmt: skip
    assert busy.returncode == 1 and f"--port {port} is in use" in busy.stderr


@pytest.mark.slow
def test_pitr_refuses_a_production_data_dir_and_redis_sets(stack: Stack) -> None:
    primary, backrest = start_backed_up_primary(stack, "pg1", full_backup=False)
    config = str(write_config(stack, primary, backrest))
    common = ["--target-time", "2030-01-01T00:00:00Z", "--port", str(free_port())]
    inside = run_cli("pitr", "--config", config, "--backup", "main-db", "--data-dir",
                     str(primary.data_dir / "restore-here"), *common)  # fmt: skip
    assert inside.returncode == 1 and f"inside the data directory {primary.data_dir}" in inside.stderr
    assert not (primary.data_dir / "restore-here").exists()
    redis = run_cli(
        "pitr", "--config", config, "--backup", "cache", "--data-dir", str(stack.root / "x"), *common
    )
    assert redis.returncode == 1 and "is a Redis set" in redis.stderr
    naive = run_cli("pitr", "--config", config, "--backup", "main-db", "--data-dir", str(stack.root / "x"),
                    "--target-time", "2030-01-01T00:00:00", "--port", "5999")  # fmt: skip
    assert naive.returncode == 2 and "UTC offset" in naive.stderr


def test_pitr_does_not_act_without_its_audit_record(stack: Stack) -> None:
    """The record comes first: a trail that cannot be written stops pitr before it touches anything."""
    primary, backrest = start_backed_up_primary(stack, "pg1", full_backup=False)
    config = write_config(stack, primary, backrest)
    (stack.root / "audit.jsonl").mkdir()  # the trail's path is a directory: every append fails
    data_dir = stack.root / "pitr-data"
    done = run_cli(
        "pitr", "--config", str(config), "--backup", "main-db", "--target-time", "2030-01-01T00:00:00Z",
        "--data-dir", str(data_dir), "--port", str(free_port()),
    )  # fmt: skip
    assert done.returncode == 1 and "not acting" in done.stderr, done.stdout + done.stderr
    assert not data_dir.exists()
