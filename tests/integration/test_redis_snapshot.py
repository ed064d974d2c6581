"""``tierwatch redis-snapshot`` (BGSAVE on the master, an atomic copy, the newest ``keep`` kept) and
``tierwatch restore-test`` of a Redis set (a throwaway server loads the newest snapshot; verify keys,
the heartbeat key for RPO)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.redis import RedisServer, start_redis

from helpers import metric_value, run_cli

PASSWORD = "snapshot-s3cret-password"


def write_config(stack: Stack, servers: list[RedisServer], **set_options: Any) -> Path:
    entry: dict[str, Any] = {
        "name": "cache-main",
        "cluster": "cache-main",
        "redis": {"directory": str(stack.root / "rdb"), "keep": 1},
        "verify_keys": ["orders:1", "orders:2"],
        "min_keys": 3,
        "heartbeat_key": "tierwatch:heartbeat",
        "timeout": "1m",
        **set_options,
    }
    data = {
        "clusters": [
            {
                "name": "cache-main",
                "tier": "redis",
                "password_env": "TW_TEST_REDIS_PASSWORD",
                "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in servers],
            }
        ],
        "backups": {
            "textfile_dir": str(stack.root / "textfile"),
            "scratch_dir": str(stack.root / "scratch"),
            "audit_log": str(stack.root / "audit.jsonl"),
            "sets": [entry],
        },
    }
    path = stack.root / f"tierwatch-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str) -> Any:
    return run_cli(*args, timeout=120, env={**os.environ, "TW_TEST_REDIS_PASSWORD": PASSWORD})


def metric(stack: Stack, file: str, name: str) -> float | None:
    return metric_value((stack.root / "textfile" / file).read_text(), name, backup="cache-main", tier="redis")


@pytest.mark.slow
def test_snapshot_then_restore_test_verifies_it(stack: Stack) -> None:
    master = start_redis(stack, "redis-a", password=PASSWORD)
    replica = start_redis(stack, "redis-b", password=PASSWORD, replica_of=master)
    client = master.client()
    client.mset({"orders:1": "a", "orders:2": "b", "other": "c"})
    heartbeat = time.time()
    client.set("tierwatch:heartbeat", f"{heartbeat:.3f}")
    config = write_config(stack, [replica, master])  # the master is found by role, not by position

    first = cli("redis-snapshot", "--config", str(config))
    assert first.returncode == 0, first.stdout + first.stderr
    time.sleep(1.1)  # snapshot names have a one-second resolution
    second = cli("redis-snapshot", "--config", str(config))
    assert second.returncode == 0, second.stdout + second.stderr
    (kept,) = sorted((stack.root / "rdb").iterdir())  # keep: 1
    assert kept.name.startswith("cache-main-") and kept.read_bytes().startswith(b"REDIS")
    prom = "tierwatch_redis_backup_cache-main.prom"
    assert metric(stack, prom, "tierwatch_redis_backup_success") == 1
    assert metric(stack, prom, "tierwatch_redis_backup_size_bytes") == kept.stat().st_size
    assert (metric(stack, prom, "tierwatch_redis_backup_duration_seconds") or 0) > 0

    before = time.time()
    done = cli("restore-test", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    prom = "tierwatch_restore_test_cache-main.prom"
    assert metric(stack, prom, "tierwatch_restore_test_success") == 1
    rpo = metric(stack, prom, "tierwatch_restore_test_rpo_seconds")
    assert rpo is not None and before - heartbeat - 0.5 <= rpo <= time.time() - heartbeat
    assert (metric(stack, prom, "tierwatch_restore_test_rto_seconds") or 0) > 0
    assert metric(stack, prom, "tierwatch_restore_test_restored_bytes") == kept.stat().st_size
    rto = metric(stack, prom, "tierwatch_restore_test_rto_seconds")
    print(f"measured (redis): RPO {rpo:.2f}s, RTO {rto:.3f}s")

    # a key the snapshot lacks fails the test at verify
    missing = write_config(stack, [master], verify_keys=["orders:1", "orders:404"])
    failed = cli("restore-test", "--config", str(missing))
    assert failed.returncode == 1 and "FAILED at stage verify" in failed.stderr
    assert metric(stack, prom, "tierwatch_restore_test_success") == 0
    records = [json.loads(line) for line in (stack.root / "audit.jsonl").read_text().splitlines()]
    assert [(r["event"], r["outcome"]) for r in records] == [
        ("redis_snapshot", "success"),
        ("redis_snapshot", "success"),
        ("restore_test", "success"),
        ("restore_test", "failure"),
    ]
    assert PASSWORD not in (stack.root / "audit.jsonl").read_text() + failed.stderr + done.stdout
    assert not [p for p in (stack.root / "scratch").iterdir() if p.name.startswith("run-")]


def test_snapshot_without_a_reachable_master_fails_and_says_so(stack: Stack) -> None:
    replica_only = start_redis(stack, "redis-r", password=PASSWORD)
    replica_only.client().execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing
    done = cli("redis-snapshot", "--config", str(write_config(stack, [replica_only])))
    assert done.returncode == 1 and "FAILED at stage master" in done.stderr
    assert metric(stack, "tierwatch_redis_backup_cache-main.prom", "tierwatch_redis_backup_success") == 0
