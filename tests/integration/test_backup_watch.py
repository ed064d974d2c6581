"""The exporter's backup watch on a real PostgreSQL primary archiving into a real pgBackRest
repository: full, incremental and differential backups are exported as ``info`` reports them, a
deleted WAL segment is a hole in the archive, a wrong stanza, a hanging command, an output flood and
a failing command each read as ``info_up 0`` within their bounds; and the heartbeat the probes write
(PostgreSQL row, Redis key) only on the primary/master, without failing the probe when refused."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.backup_watch import (
    BackupCollector,
    BackupWatch,
    CommandFailed,
    Reading,
    read_repository,
    run_command,
)
from tierwatch.config import load_config
from tierwatch.config.cluster_backup import BackupConfig, PgBackRestWatch
from tierwatch.events import EventLog
from tierwatch.probes.base import Observation, TargetInfo
from tierwatch.probes.postgres import PostgresProbe
from tierwatch.probes.redis import RedisProbe
from tierwatch_lab.demo_backups import create_heartbeat_table
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.pgbackrest import PgBackRest, start_backed_up_primary
from tierwatch_lab.stack.postgres import PgServer, start_replica
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value, processes_mentioning
from pg_fixtures import PgCluster
from redis_fixtures import make_cluster, redis_stack, target_info

__all__ = ["redis_stack"]  # a fixture, imported for pytest

HEARTBEAT = "public.tierwatch_heartbeat"
OS_USER = "postgres" if os.geteuid() == 0 else None
UP = "tierwatch_backup_info_up"
WRITTEN = "tierwatch_backup_heartbeat_write_success"
PG_URL = "postgresql://tw@127.0.0.1:1/postgres"


@dataclass
class Backed:
    stack: Stack
    primary: PgServer
    replica: PgServer
    backrest: PgBackRest

    def watch(self, **changes: Any) -> PgBackRestWatch:
        fields: dict[str, Any] = {"stanza": self.backrest.stanza, "config": str(self.backrest.config),
                                  "os_user": OS_USER, "timeout": 30.0, **changes}  # fmt: skip
        return PgBackRestWatch(**fields)


@pytest.fixture(scope="module")
def backed() -> Iterator[Backed]:
    """A primary archiving into pgBackRest with a full, an incremental and a differential backup, and a
    streaming replica; the heartbeat table exists, granted to the monitor role."""
    with Stack() as stack:
        primary, backrest = start_backed_up_primary(stack, "pg-1")
        replica = start_replica(stack, primary, "pg-2")
        create_heartbeat_table(primary)
        primary.sql(
            "CREATE TABLE public.heartbeat_not_granted (id integer PRIMARY KEY, ts timestamptz NOT NULL)"
        )
        for kind in ("incr", "diff"):
            backrest.backup(kind)
        yield Backed(stack, primary, replica, backrest)


def read(watch: PgBackRestWatch) -> Reading:
    return asyncio.run(read_repository(watch))


def exposition(*readings: tuple[str, Reading]) -> str:
    """What the collector renders for these readings (cluster name, reading)."""
    watch = BackupWatch(lambda: None, EventLog(stream=io.StringIO()))  # type: ignore[arg-type, return-value]
    for cluster, reading in readings:
        watch.readings["postgres", cluster] = reading
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackupCollector(watch))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# ---- reading the repository ----


@pytest.mark.slow
def test_every_backup_type_is_exported_as_info_reports_it(backed: Backed) -> None:
    reading = read(backed.watch())
    assert reading.ok, reading
    text = exposition(("main-db", reading))
    info = backed.backrest.info()
    labels = {"tier": "postgres", "cluster": "main-db"}
    assert metric_value(text, UP, **labels) == 1
    assert metric_value(text, "tierwatch_backup_stanza_status_code", **labels) == info["status"]["code"] == 0
    assert 0 < metric_value(text, "tierwatch_backup_info_read_duration_seconds", **labels) < 30  # type: ignore[operator]
    for kind in ("full", "diff", "incr"):
        of_kind = [b for b in info["backup"] if b["type"] == kind]
        newest = max(of_kind, key=lambda b: b["timestamp"]["stop"])
        typed = {**labels, "type": kind}
        assert metric_value(text, "tierwatch_backups", **typed) == len(of_kind) == 1
        assert (
            metric_value(text, "tierwatch_backup_last_completion_timestamp_seconds", **typed)
            == (newest["timestamp"]["stop"])
        )
        assert metric_value(text, "tierwatch_backup_last_duration_seconds", **typed) == (
            newest["timestamp"]["stop"] - newest["timestamp"]["start"]
        )
        assert metric_value(text, "tierwatch_backup_last_size_bytes", **typed) == newest["info"]["size"]
        assert (
            metric_value(text, "tierwatch_backup_last_repository_size_bytes", **typed)
            == (newest["info"]["repository"]["delta"])
        )
        assert metric_value(text, "tierwatch_backup_last_error", **typed) == 0
    files = backed.backrest.archive_segment_files()
    assert metric_value(text, "tierwatch_backup_wal_archive_segments", **labels) == len(files) >= 7
    assert metric_value(text, "tierwatch_backup_wal_archive_missing_segments", **labels) == 0
    numbers = [int(path.name[8:16], 16) * 256 + int(path.name[16:24], 16) for path in files]
    assert metric_value(text, "tierwatch_backup_wal_archive_first_segment", **labels) == min(numbers)
    assert metric_value(text, "tierwatch_backup_wal_archive_last_segment", **labels) == max(numbers)
    newest_push = max(int(path.stat().st_mtime) for path in files)
    assert (
        metric_value(text, "tierwatch_backup_wal_archive_last_push_timestamp_seconds", **labels)
        == newest_push
    )


@pytest.mark.slow
def test_a_deleted_segment_is_a_hole_in_the_archive(backed: Backed, tmp_path: Path) -> None:
    files = backed.backrest.archive_segment_files()
    middle = files[len(files) // 2]
    kept = tmp_path / middle.name
    shutil.move(middle, kept)
    try:
        reading = read(backed.watch())
        assert reading.ok and reading.wal is not None
        assert (reading.wal.segments, reading.wal.missing) == (len(files) - 1, 1)
        text = exposition(("main-db", reading))
        assert metric_value(text, "tierwatch_backup_wal_archive_missing_segments", cluster="main-db") == 1
    finally:
        shutil.move(kept, middle)
    assert read(backed.watch()).wal.missing == 0  # type: ignore[union-attr]


@pytest.mark.slow
def test_a_wrong_stanza_reads_as_down_with_its_status(backed: Backed) -> None:
    reading = read(backed.watch(stanza="nope"))
    assert (reading.ok, reading.failure) == (False, "stanza_missing")
    text = exposition(("main-db", reading))
    assert metric_value(text, UP, cluster="main-db") == 0
    assert metric_value(text, "tierwatch_backup_stanza_status_code", cluster="main-db") == 1
    assert metric_value(text, "tierwatch_backup_info_last_read_timestamp_seconds") == pytest.approx(
        time.time(), abs=30
    )
    assert "tierwatch_backups{" not in text and "tierwatch_backup_wal_archive_segments{" not in text


def test_a_hanging_command_is_ended_at_its_timeout(tmp_path: Path) -> None:
    hang = script(tmp_path, "hang-pgbackrest", "sleep 3271 &\nsleep 3272")  # a child in its group too
    started = time.monotonic()
    reading = read(PgBackRestWatch(stanza="main", command=str(hang), timeout=1.0))
    assert (reading.failure, reading.details["command"]) == ("timeout", "info")
    assert 1.0 <= reading.duration < 3.0 and time.monotonic() - started < 3.0
    wait_for(lambda: not processes_mentioning(str(hang)) and not processes_mentioning("sleep 327"), 5,
             "the killed command's process group to be gone")  # fmt: skip
    text = exposition(("main-db", reading))
    assert metric_value(text, UP) == 0
    assert (metric_value(text, "tierwatch_backup_info_read_duration_seconds") or 0) >= 1.0


def test_an_output_flood_is_cut_at_the_byte_bound(tmp_path: Path) -> None:
    flood = script(tmp_path, "flood-pgbackrest", 'exec yes \'[{"name": "main", "status": {"code": 0}}]\'')
    started = time.monotonic()
    reading = read(PgBackRestWatch(stanza="main", command=str(flood), timeout=20.0))
    assert reading.failure == "too_large" and time.monotonic() - started < 10
    wait_for(lambda: not processes_mentioning(str(flood)), 5, "the flooding command to be gone")
    with pytest.raises(CommandFailed) as caught:
        asyncio.run(run_command([str(flood)], user=None, timeout=20.0, limit=1 << 20))
    assert caught.value.kind == "too_large"


def test_a_failing_or_garbled_command(tmp_path: Path) -> None:
    failing = script(
        tmp_path, "fail", "echo 'ERROR: [055]: unable to load info file /secret/path' >&2\nexit 55"
    )
    reading = read(PgBackRestWatch(stanza="main", command=str(failing)))
    assert (reading.failure, reading.details) == (
        "exit",
        {"command": "info", "exit_code": 55, "pgbackrest_error": "055"},
    )
    nested = script(tmp_path, "nested", "head -c 300000 /dev/zero | tr '\\0' '['")
    assert read(PgBackRestWatch(stanza="main", command=str(nested))).failure == "bad_report"
    missing = read(PgBackRestWatch(stanza="main", command=str(tmp_path / "absent")))
    assert missing.failure == "spawn"


def test_the_watch_follows_reloads_and_logs_failures_without_paths(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    failing = script(tmp_path, "fail", "echo 'ERROR: [055]: unable to load /secret/path' >&2\nexit 55")
    hang = script(tmp_path, "hang", "sleep 300")

    def loaded(cluster: str, command: Path) -> Any:
        pgbackrest = {"stanza": "main", "command": str(command), "config": "/secret/pgbackrest.conf",
                      "interval": "10s", "timeout": "5s"}  # fmt: skip
        return load_config(write_config({"clusters": [{
            "name": cluster, "tier": "postgres", "backup": {"pgbackrest": pgbackrest},
            "targets": [{"name": "pg-1", "region": "p", "url": PG_URL}]}]}))  # fmt: skip

    log = io.StringIO()
    current = {"config": loaded("db", failing)}

    async def scenario() -> None:
        watch = BackupWatch(lambda: current["config"], EventLog(stream=log))
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        await _until(lambda: ("postgres", "db") in watch.readings, 5)
        assert watch.readings["postgres", "db"].failure == "exit"
        current["config"] = loaded("db2", hang)  # a reload: db is gone, db2 hangs
        await _until(lambda: ("postgres", "db") not in watch.readings, 5)
        await asyncio.sleep(0.5)
        assert processes_mentioning(str(hang))  # db2's read is under way
        stop.set()
        await asyncio.wait_for(task, 10)  # stopping kills db2's command
        assert not processes_mentioning(str(hang))

    asyncio.run(scenario())
    [line] = [line for line in log.getvalue().splitlines() if "backup_info_read_failed" in line]
    assert "cluster=db " in line and "failure=exit" in line and "pgbackrest_error=055" in line
    assert "secret" not in log.getvalue()


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# ---- the heartbeat ----


def observe_pg(backed: Backed, name: str, table: str) -> Observation:
    cluster = PgCluster(backed.stack, {"pg-1": backed.primary, "pg-2": backed.replica})
    config = cluster.config.model_copy(update={"backup": BackupConfig(heartbeat_table=table)})
    base = cluster.info(name)
    target = next(t for t in config.targets if t.name == name)
    info = TargetInfo(tier="postgres", cluster=config, target=target, password=base.password, timeout=2.0)

    async def run() -> Observation:
        probe = PostgresProbe(info)
        try:
            return await probe.probe()
        finally:
            await probe.close()

    return asyncio.run(run())


def written(obs: Observation) -> float | None:
    return next((s.value for s in obs.samples if s.spec.name == WRITTEN), None)


@pytest.mark.slow
def test_the_postgres_probe_writes_the_heartbeat_on_the_primary_only(backed: Backed) -> None:
    before = time.time()
    obs = observe_pg(backed, "pg-1", HEARTBEAT)
    assert obs.role == "primary" and written(obs) == 1
    [(row_id, stamp)] = backed.primary.sql(f"SELECT id, extract(epoch FROM ts)::float8 FROM {HEARTBEAT}")
    assert row_id == 1 and before - 1 <= stamp <= time.time() + 1
    again = observe_pg(backed, "pg-1", HEARTBEAT)
    assert written(again) == 1
    assert backed.primary.scalar(f"SELECT extract(epoch FROM ts)::float8 FROM {HEARTBEAT}") > stamp
    assert backed.primary.scalar(f"SELECT count(*) FROM {HEARTBEAT}") == 1
    replica = observe_pg(backed, "pg-2", HEARTBEAT)
    assert replica.role == "replica" and written(replica) is None  # never tried on a replica


@pytest.mark.slow
@pytest.mark.parametrize(
    "table", ["public.heartbeat_not_granted", "public.no_such_table", "Public.Heartbeat"]
)
def test_a_refused_heartbeat_does_not_fail_the_probe(backed: Backed, table: str) -> None:
    obs = observe_pg(backed, "pg-1", table)
    assert obs.role == "primary" and written(obs) == 0
    assert any(s.spec.name == "tierwatch_pg_server_version_num" for s in obs.samples)


def test_the_redis_probe_sets_the_heartbeat_key_on_the_master_only(redis_stack: Stack) -> None:
    master = start_redis(redis_stack, "redis-a")
    replica = start_redis(redis_stack, "redis-b", replica_of=master)
    backup = BackupConfig(heartbeat_key="tierwatch:heartbeat")
    cluster = make_cluster([master, replica]).model_copy(update={"backup": backup})

    def observe(name: str) -> Observation:
        async def run() -> Observation:
            probe = RedisProbe(target_info(cluster, name))
            try:
                return await probe.probe()
            finally:
                await probe.close()

        return asyncio.run(run())

    before = time.time()
    obs = observe("redis-a")
    assert obs.role == "primary" and written(obs) == 1
    value = float(master.client().get("tierwatch:heartbeat"))
    assert before - 1 <= value <= time.time() + 1
    assert written(observe("redis-b")) is None
    # a master that refuses writes (no good replica): the probe still succeeds
    master.client().config_set("min-replicas-to-write", "5")
    refused = observe("redis-a")
    assert refused.role == "primary" and written(refused) == 0
    assert float(master.client().get("tierwatch:heartbeat")) == value


# ---- end to end: the real exporter ----


@pytest.mark.slow
def test_the_exporter_serves_the_backup_metrics_and_writes_heartbeats(
    backed: Backed, redis_stack: Stack, tmp_path: Path
) -> None:
    redis = start_redis(redis_stack, "redis-a")
    password = tmp_path / "pg"
    password.write_text(backed.primary.monitor_password)
    password.chmod(0o600)
    user = {"os_user": OS_USER} if OS_USER else {}
    pgbackrest = {"stanza": backed.backrest.stanza, "config": str(backed.backrest.config),
                  "interval": "10s", "timeout": "8s", **user}  # fmt: skip
    config: dict[str, Any] = {
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "clusters": [
            {"name": "main-db", "tier": "postgres", "password_file": str(password),
             "backup": {"pgbackrest": pgbackrest, "heartbeat_table": HEARTBEAT},
             "targets": [{"name": "pg-1", "region": "p", "url": backed.primary.dsn_without_password}]},
            {"name": "cache", "tier": "redis", "backup": {"heartbeat_key": "tierwatch:heartbeat"},
             "targets": [{"name": "redis-a", "region": "p", "url": redis.url}]},
        ],
    }  # fmt: skip
    path = tmp_path / "tierwatch.yml"
    path.write_text(yaml.safe_dump(config))
    exporter = start_exporter(redis_stack, path)

    def scrape() -> str:
        return httpx.get(f"{exporter.url}/metrics", timeout=5).text

    def scrape_when_up(up: int) -> str | None:
        text = scrape()
        return text if metric_value(text, UP, cluster="main-db") == up else None

    text = wait_for(lambda: scrape_when_up(1), 30, "the first read of the repository")
    info = backed.backrest.info()
    for kind in ("full", "diff", "incr"):
        count = sum(1 for b in info["backup"] if b["type"] == kind)
        assert metric_value(text, "tierwatch_backups", cluster="main-db", type=kind) == count
    assert metric_value(text, "tierwatch_backup_wal_archive_missing_segments", cluster="main-db") == 0
    first = backed.primary.scalar(f"SELECT extract(epoch FROM ts)::float8 FROM {HEARTBEAT}")
    wait_for(lambda: backed.primary.scalar(f"SELECT extract(epoch FROM ts)::float8 FROM {HEARTBEAT}") > first,
             10, "the exporter's probe to write the heartbeat again")  # fmt: skip
    wait_for(lambda: redis.client().get("tierwatch:heartbeat") is not None, 10, "the Redis heartbeat")
    assert abs(float(redis.client().get("tierwatch:heartbeat")) - time.time()) < 5
    text = scrape()
    assert metric_value(text, WRITTEN, cluster="main-db", target="pg-1") == 1
    assert metric_value(text, WRITTEN, cluster="cache", target="redis-a") == 1

    # a reload to a wrong stanza: the next read is down, nothing stale stays
    config["clusters"][0]["backup"]["pgbackrest"]["stanza"] = "nope"
    path.write_text(yaml.safe_dump(config))
    assert httpx.post(f"{exporter.url}/-/reload", timeout=10).status_code == 200
    text = wait_for(lambda: scrape_when_up(0), 15, "the reloaded stanza to read as down")
    assert "tierwatch_backups{" not in text
    assert metric_value(text, "tierwatch_backup_stanza_status_code", cluster="main-db") == 1
    log = exporter.process.log_path.read_text()
    assert "backup_info_read_failed" in log and str(backed.backrest.config) not in log
