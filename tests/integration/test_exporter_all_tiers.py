"""The exporter watching every tier at once (HAProxy pair with VIP, app servers, Redis master +
replica + Sentinel with queues, PostgreSQL primary + replica): the real output passes
`promtool check metrics`, a primary's view of its replicas lands on the replicas, and no password
appears anywhere."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.haproxy import start_haproxy, start_vip
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.postgres import start_primary, start_replica
from tierwatch_lab.stack.redis import start_redis, start_sentinels
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value as value
from helpers import terminate

REDIS_PASSWORD = "redis-Pa55-word-xyz"


def test_every_tier_through_the_real_exporter(
    stack: Stack, write_config: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    apps = [start_http_backend(stack, f"es-{i}") for i in (1, 2)]
    lbs = [start_haproxy(stack, f"lb-{i}", [(a.name, a.port) for a in apps]) for i in (1, 2)]
    vip = start_vip(stack, lbs)
    master = start_redis(stack, "redis-a", password=REDIS_PASSWORD)
    replica = start_redis(stack, "redis-b", password=REDIS_PASSWORD, replica_of=master)
    sentinels = start_sentinels(stack, master, n=1, quorum=1, master_name="cache-main")
    master.client().rpush("jobs", "a", "b", "c")
    primary = start_primary(stack, "pg-1")
    standby = start_replica(stack, primary, "pg-2")
    (tmp_path / "redis").write_text(REDIS_PASSWORD)
    (tmp_path / "pg").write_text(primary.monitor_password)
    config = write_config(
        {
            "monitor": {"interval": "1s", "timeout": "800ms"},
            "log": {"format": "json"},
            "clusters": [
                {
                    "name": "edge",
                    "tier": "lb",
                    "vip": vip.url,
                    "targets": [
                        {
                            "name": lb.name,
                            "region": "primary",
                            "url": lb.url,
                            "stats_socket": str(lb.stats_socket),
                        }
                        for lb in lbs
                    ],
                },
                {
                    "name": "web",
                    "tier": "app",
                    "targets": [{"name": a.name, "region": "primary", "url": a.url} for a in apps],
                },
                {
                    "name": "cache-main",
                    "tier": "redis",
                    "password_file": str(tmp_path / "redis"),
                    "targets": [
                        {"name": s.name, "region": "primary", "url": s.url} for s in (master, replica)
                    ],
                    "sentinel": {
                        "master_name": "cache-main",
                        "targets": [{"name": "sentinel-1", "region": "primary", "url": sentinels[0].url}],
                    },
                    "queues": [{"name": "jobs", "kind": "list"}, {"name": "emails", "kind": "bullmq"}],
                },
                {
                    "name": "main-db",
                    "tier": "postgres",
                    "password_file": str(tmp_path / "pg"),
                    "targets": [
                        {"name": "pg-1", "region": "primary", "url": primary.dsn_without_password},
                        {"name": "pg-2", "region": "primary", "url": standby.dsn_without_password},
                    ],
                },
            ],
        }
    )
    exporter = start_exporter(stack, config)
    base = exporter.url
    try:

        def all_up() -> str | None:
            text = httpx.get(base + "/metrics").text
            ups = [line for line in text.splitlines() if line.startswith("tierwatch_up{")]
            return text if len(ups) == 9 and all(line.endswith(" 1.0") for line in ups) else None

        text = wait_for(all_up, 30, "every target up")
        text = httpx.get(base + "/metrics").text
        promtool = shutil.which("promtool")
        assert promtool
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
            check.stdout + check.stderr
        )
        assert value(text, "tierwatch_role", target="redis-a", role="primary") == 1
        assert value(text, "tierwatch_role", target="redis-b", role="replica") == 1
        assert value(text, "tierwatch_role", target="pg-1", role="primary") == 1
        assert value(text, "tierwatch_role", target="pg-2", role="replica") == 1
        assert value(text, "tierwatch_role", target="lb-1", role="active") == 1
        # the Redis master measures its replica's lag; the series carries the replica's labels
        assert value(text, "tierwatch_replication_lag_bytes", target="redis-b") is not None
        assert value(text, "tierwatch_replication_lag_bytes", target="redis-a") is None
        assert value(text, "tierwatch_replication_lag_bytes", target="pg-2") is not None
        assert value(text, "tierwatch_queue_length", target="redis-a", queue="jobs") == 3
        assert value(text, "tierwatch_queue_length", target="redis-b", queue="jobs") is None
        assert value(text, "tierwatch_sentinel_master_target", master_target="redis-a") == 1
        assert value(text, "tierwatch_cache_hits_total", target="pg-1") is not None
        page = httpx.get(base + "/").text
        for body in (text, page):
            assert REDIS_PASSWORD not in body and primary.monitor_password not in body
    finally:
        code, out = terminate(exporter.process)
    assert code == 0, out
    assert REDIS_PASSWORD not in out and primary.monitor_password not in out
