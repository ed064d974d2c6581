"""Data safety on real servers: Redis persistence (RDB snapshot result and age, AOF write and rewrite
results) from a real redis-server whose saves are made to fail, and PostgreSQL base-backup freshness
from the backup_label a real pg_basebackup wrote; the config checks of ``backup:``; and end to end, the
real exporter scraped by a real Prometheus with the shipped rules: a missing backup file fires
PostgresBaseBackupStale and a fresh one resolves it, a failed BGSAVE fires RedisRdbSaveFailed and a good
one resolves it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis.exceptions import ResponseError

from tierwatch.config import ConfigError, load_config
from tierwatch.config.exporter import BackupConfig, ClusterConfig
from tierwatch.probes.base import Observation, TargetInfo
from tierwatch.probes.pg_backup import backup_time
from tierwatch.probes.postgres import PostgresProbe
from tierwatch.probes.redis_persistence import save_configured
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.ports import port_open
from tierwatch_lab.stack.postgres import start_primary
from tierwatch_lab.stack.prometheus import ScrapeJob, rules_with_for, start_prometheus
from tierwatch_lab.stack.redis import RedisServer, start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from pg_fixtures import PgCluster, pg_pair
from redis_fixtures import make_cluster, probe_once, redis_stack, target_info, value

__all__ = ["pg_pair", "redis_stack"]  # fixtures, imported for pytest

SNAPSHOTS = ("save 3600 1", "enable-protected-configs yes")  # CONFIG SET dir needs the latter
LAST_SAVE = "tierwatch_redis_rdb_last_save_timestamp_seconds"
RDB_OK = "tierwatch_redis_rdb_last_bgsave_ok"
AOF_WRITE_OK = "tierwatch_redis_aof_last_write_ok"
AOF_REWRITE_OK = "tierwatch_redis_aof_last_rewrite_ok"
BACKUP = "tierwatch_pg_base_backup_timestamp_seconds"
ROOT = Path(__file__).resolve().parents[2]


def probe(server: RedisServer) -> Observation:
    return probe_once(target_info(make_cluster([server]), server.name))


def persistence(server: RedisServer) -> dict[str, Any]:
    info: dict[str, Any] = server.client().info("persistence")
    return info


def wait_idle(server: RedisServer) -> dict[str, Any]:
    """INFO persistence once no background save or rewrite runs."""

    def idle() -> dict[str, Any] | None:
        info = persistence(server)
        busy = info["rdb_bgsave_in_progress"] or info["aof_rewrite_in_progress"]
        return None if busy else info

    return wait_for(idle, 15, f"{server.name} to finish its background save")


# ---- Redis ----


def test_snapshot_time_and_result_follow_a_real_save(redis_stack: Stack) -> None:
    server = start_redis(redis_stack, "redis-a", extra_config=SNAPSHOTS)
    first = probe(server)
    assert value(first, RDB_OK) == 1
    assert value(first, LAST_SAVE) == persistence(server)["rdb_last_save_time"]
    before = value(first, LAST_SAVE)
    server.client().set("k", "v")
    time.sleep(1.1)  # rdb_last_save_time has a resolution of one second
    server.client().bgsave()
    wait_for(lambda: wait_idle(server)["rdb_last_save_time"] > before, 15, "the save to be recorded")
    later = probe(server)
    assert value(later, LAST_SAVE) == persistence(server)["rdb_last_save_time"] > before  # type: ignore[operator]
    assert value(later, RDB_OK) == 1


def test_failed_save_and_rewrite_are_reported_and_clear_once_fixed(redis_stack: Stack) -> None:
    server = start_redis(redis_stack, "redis-a", extra_config=(*SNAPSHOTS, "appendonly yes"))
    client = server.client()
    wait_idle(server)
    assert (value(probe(server), RDB_OK), value(probe(server), AOF_REWRITE_OK)) == (1, 1)
    last_good = persistence(server)["rdb_last_save_time"]
    # /proc takes no new files, not even from root: the save's temp file and the AOF dir fail
    client.config_set("dir", "/proc")
    client.bgsave()
    wait_for(lambda: wait_idle(server)["rdb_last_bgsave_status"] == "err", 15, "the save to fail")
    with pytest.raises(Exception, match="rewriting"):
        client.bgrewriteaof()
    info = wait_idle(server)
    assert info["aof_last_bgrewrite_status"] == "err"
    broken = probe(server)
    assert value(broken, RDB_OK) == 0
    assert value(broken, AOF_REWRITE_OK) == 0
    assert value(broken, AOF_WRITE_OK) == 1  # appends to the open file still work
    assert value(broken, LAST_SAVE) == last_good  # the last *successful* save
    client.config_set("dir", str(server.dir))
    client.bgsave()
    wait_for(lambda: wait_idle(server)["rdb_last_bgsave_status"] == "ok", 15, "the save to succeed")
    client.bgrewriteaof()
    wait_for(lambda: wait_idle(server)["aof_last_bgrewrite_status"] == "ok", 15, "the rewrite to succeed")
    fixed = probe(server)
    assert (value(fixed, RDB_OK), value(fixed, AOF_REWRITE_OK)) == (1, 1)


def test_aof_write_error_on_a_full_disk_is_reported(redis_stack: Stack) -> None:
    # redis-server in a mount namespace of its own, its dir a 512 KiB tmpfs only it sees
    port = free_port()
    data = redis_stack.directory("redis-full", "data")
    conf = redis_stack.path("redis-full", "redis.conf")
    conf.write_text(f'port {port}\nbind 127.0.0.1\ndir "{data}"\nsave ""\nappendonly yes\nlogfile ""\n')
    mount = f"mount -t tmpfs -o size=512k tw-data-safety {data} && exec redis-server {conf}"
    process = redis_stack.spawn(
        "redis-full", ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
    )
    server = RedisServer("redis-full", port, process, data)
    client = server.client(socket_timeout=2.0)

    def ready() -> bool:
        process.check_alive()
        return port_open(port) and bool(client.ping())

    wait_for(ready, 15, "redis-full to start")
    assert value(probe(server), AOF_WRITE_OK) == 1
    client.set("big", "x" * (1024 * 1024))  # more than the disk holds: the append fails
    wait_for(lambda: persistence(server)["aof_last_write_status"] == "err", 15, "the AOF write to fail")
    assert value(probe(server), AOF_WRITE_OK) == 0
    assert "tw-data-safety" not in Path("/proc/mounts").read_text()  # the host never saw the mount


def test_without_snapshots_or_aof_no_extra_series(redis_stack: Stack) -> None:
    server = start_redis(redis_stack, "redis-a")  # the lab's default: save "" and appendonly no
    obs = probe(server)
    assert value(obs, RDB_OK) == 1
    assert value(obs, LAST_SAVE) is None  # an age without a schedule would only ever grow
    assert value(obs, AOF_WRITE_OK) is None and value(obs, AOF_REWRITE_OK) is None


def test_snapshot_age_is_dropped_where_config_get_is_refused(redis_stack: Stack) -> None:
    server = start_redis(
        redis_stack, "redis-a", password="pw-data-safety", username="watcher", extra_config=SNAPSHOTS
    )
    server.client().acl_setuser("watcher", enabled=True, commands=["-config"], reset_keys=False)
    obs = probe_once(target_info(make_cluster([server]), "redis-a", password="pw-data-safety"))
    assert value(obs, RDB_OK) == 1 and value(obs, LAST_SAVE) is None


def test_save_config_replies() -> None:
    assert save_configured([b"save", b"3600 1 300 100"]) is True
    assert save_configured({"save": ""}) is False  # RESP3 map; snapshots off
    assert save_configured([]) is False  # a Redis-compatible server without the setting
    assert save_configured(ResponseError("NOPERM")) is None  # refused: stop asking


# ---- PostgreSQL base backups ----


def test_backup_label_of_a_real_base_backup_gives_its_start_time(pg_pair: PgCluster) -> None:
    # the replica was cloned by pg_basebackup; PostgreSQL renamed its backup_label on start
    label = pg_pair.servers["pg-2"].data_dir / "backup_label.old"
    text = label.read_text()
    assert "START TIME:" in text
    os.utime(label, (1_000_000_000, 1_000_000_000))  # an old mtime: the content must win
    started = backup_time(str(label))
    assert time.time() - 600 < started <= time.time()


def test_timestamp_content_mtime_and_missing_file(tmp_path: Path) -> None:
    stamp = tmp_path / "last-backup"
    stamp.write_text("1796000000\n")
    assert backup_time(str(stamp)) == 1796000000
    touched = tmp_path / "touched"
    touched.write_text("backup done\n")
    os.utime(touched, (1795000000, 1795000000))
    assert backup_time(str(touched)) == 1795000000
    label = tmp_path / "backup_label"
    label.write_text("START WAL LOCATION: 0/2000028\nSTART TIME: 2026-11-30 23:00:00 +01\nLABEL: x\n")
    assert backup_time(str(label)) == 1796076000  # 2026-11-30 22:00:00 UTC
    assert backup_time(str(tmp_path / "absent")) == 0.0


def test_only_the_primary_reports_the_base_backup(pg_pair: PgCluster, tmp_path: Path) -> None:
    stamp = tmp_path / "last-backup"
    stamp.write_text("1796000000\n")
    config = pg_pair.config.model_copy(update={"backup": BackupConfig(last_backup_file=str(stamp))})

    async def observe(name: str) -> Observation:
        base = pg_pair.info(name)
        target = next(t for t in config.targets if t.name == name)
        info = TargetInfo(tier="postgres", cluster=config, target=target, password=base.password, timeout=2.0)
        probe = PostgresProbe(info)
        try:
            return await probe.probe()
        finally:
            await probe.close()

    assert value(asyncio.run(observe("pg-1")), BACKUP) == 1796000000
    assert value(asyncio.run(observe("pg-2")), BACKUP) is None
    stamp.unlink()
    assert value(asyncio.run(observe("pg-1")), BACKUP) == 0  # no backup known: the age alert fires


def test_backup_config_is_checked(write_config: Callable[..., Path]) -> None:
    target = {"name": "t-1", "region": "primary"}
    data = {
        "clusters": [
            {"name": "db", "tier": "postgres", "backup": {"last_backup_file": "backups/latest"},
             "targets": [{**target, "url": "postgresql://tw@127.0.0.1:5432/postgres"}]},
            {"name": "cache", "tier": "redis", "backup": {"last_backup_file": "/var/backups/x"},
             "targets": [{**target, "name": "t-2", "url": "redis://127.0.0.1:6379"}]},
            {"name": "db2", "tier": "postgres", "backup": {"last_backup": "/x"},
             "targets": [{**target, "name": "t-3", "url": "postgresql://tw@127.0.0.1:5433/postgres"}]},
        ]
    }  # fmt: skip
    path = write_config(data)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    joined = "\n".join(caught.value.problems)
    assert "clusters[0](db).backup.last_backup_file: expected an absolute path" in joined
    assert "backups/latest" not in joined  # a path is never echoed
    assert "clusters[1](cache).backup.last_backup_file: is only valid on a cluster of tier postgres" in joined
    assert "clusters[2](db2).backup" in joined and "last_backup" in joined
    assert all(problem.startswith(f"{path}:") for problem in caught.value.problems)
    data["clusters"] = data["clusters"][:1]
    data["clusters"][0]["backup"]["last_backup_file"] = "/var/backups/pg/latest/backup_label"
    loaded = load_config(write_config(data))
    cluster: ClusterConfig = loaded.config.clusters[0]
    assert cluster.backup is not None and cluster.backup.last_backup_file.endswith("backup_label")


# ---- end to end: the exporter, a real Prometheus and the shipped rules ----

DATA_SAFETY_ALERTS = (
    "RedisRdbSaveFailed",
    "RedisRdbSaveStale",
    "RedisAofWriteFailed",
    "RedisAofRewriteFailed",
    "PostgresBaseBackupStale",
)


@pytest.mark.slow
def test_alerts_fire_and_resolve_through_prometheus(redis_stack: Stack, tmp_path: Path) -> None:
    stack = redis_stack
    redis = start_redis(stack, "redis-a", extra_config=SNAPSHOTS)
    primary = start_primary(stack, "pg-1")
    (tmp_path / "pg").write_text(primary.monitor_password)
    (tmp_path / "pg").chmod(0o600)
    stamp = tmp_path / "last-base-backup"  # no backup yet: the file is missing
    config = {
        "monitor": {"interval": "1s", "timeout": "800ms"},
        "clusters": [
            {"name": "cache", "tier": "redis",
             "targets": [{"name": "redis-a", "region": "p", "url": redis.url}]},
            {"name": "db", "tier": "postgres", "password_file": str(tmp_path / "pg"),
             "backup": {"last_backup_file": str(stamp)},
             "targets": [{"name": "pg-1", "region": "p", "url": primary.dsn_without_password}]},
        ],
    }  # fmt: skip
    (tmp_path / "tierwatch.yml").write_text(yaml.safe_dump(config))
    exporter = start_exporter(stack, tmp_path / "tierwatch.yml")
    shipped = sorted((ROOT / "rules").glob("*.rules.yml"))
    rules = rules_with_for(shipped, tmp_path / "rules", dict.fromkeys(DATA_SAFETY_ALERTS, "1s"))
    prom = start_prometheus(stack, [ScrapeJob("tierwatch", [exporter.address])], rules)

    def backup_alert() -> str:
        return prom.alert_state("PostgresBaseBackupStale", cluster="db", tier="postgres")

    def save_alert() -> str:
        return prom.alert_state("RedisRdbSaveFailed", cluster="cache", target="redis-a")

    wait_for(lambda: backup_alert() == "firing", 60, "no backup known to fire the alert")
    stamp.write_text(f"{int(time.time())}\n")  # a backup just finished
    wait_for(lambda: backup_alert() == "inactive", 60, "a fresh backup to resolve it")

    assert save_alert() == "inactive"
    client = redis.client()
    client.config_set("dir", "/proc")  # no new file there, not even for root
    client.bgsave()
    wait_for(lambda: save_alert() == "firing", 60, "a failed save to fire the alert")
    client.config_set("dir", str(redis.dir))
    client.bgsave()
    wait_for(lambda: save_alert() == "inactive", 60, "a good save to resolve it")
    # the new series pass promtool's lint as the exporter serves them
    text = httpx.get(f"{exporter.url}/metrics", timeout=5).text
    assert all(name in text for name in (LAST_SAVE, BACKUP, RDB_OK))
    promtool = shutil.which("promtool")
    assert promtool is not None
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert prom.rule_health() == []
