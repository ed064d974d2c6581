"""``tierwatch demo``: the architecture on one machine, watched by the exporter.

Starts, on 127.0.0.1 with the machine's own binaries: an HAProxy pair behind a VIP (a forwarder that
plays VRRP: see stack/tcp_forwarder.py), four app servers in two regions, Redis master + 2 replicas +
a backup master and replica in the failover region (+ 3 Sentinels with ``--sentinel``), PostgreSQL
primary + 2 replicas + a DR replica, and the exporter. Ctrl-C stops everything and removes its data.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import load_config
from .server import run_exporter
from .stack import Stack, StackError
from .stack.haproxy import start_haproxy, start_vip
from .stack.http import start_http_backend
from .stack.postgres import pg_bin_dir, start_primary, start_replica
from .stack.redis import RedisServer, start_redis, start_sentinels

REQUIRED = {
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
}


@dataclass
class DemoStack:
    """What the demo started and the exporter config that watches it."""

    stack: Stack
    config_path: Path
    summary: list[str]


def missing_packages() -> list[str]:
    """Debian packages the demo needs that are not installed."""
    missing = [package for binary, package in REQUIRED.items() if shutil.which(binary) is None]
    try:
        pg_bin_dir()
    except (FileNotFoundError, StackError):
        missing.append("postgresql")
    return missing


def build(stack: Stack, sentinel: bool = False) -> DemoStack:
    """Start every server of the demo in ``stack`` and write the exporter's config."""
    summary: list[str] = []
    apps = {f"es-{i}": start_http_backend(stack, f"es-{i}") for i in range(1, 5)}
    regions = {"es-1": "primary", "es-2": "primary", "es-3": "failover", "es-4": "failover"}
    lbs = [start_haproxy(stack, f"lb-{i}", [(n, a.port) for n, a in apps.items()]) for i in (1, 2)]
    vip = start_vip(stack, lbs)
    summary.append(f"VIP            {vip.url}  (lb-1 {lbs[0].url}, lb-2 {lbs[1].url})")

    password = secrets.token_urlsafe(16)
    redis_a = start_redis(stack, "redis-a", password=password)
    redis_b = start_redis(stack, "redis-b", password=password, replica_of=redis_a)
    redis_c = start_redis(stack, "redis-c", password=password, replica_of=redis_a)
    redis_d = start_redis(stack, "redis-d", password=password, replica_of=redis_a)
    redis_e = start_redis(stack, "redis-e", password=password, replica_of=redis_d)
    redis_regions = {
        "redis-a": "primary",
        "redis-b": "primary",
        "redis-c": "primary",
        "redis-d": "failover",
        "redis-e": "failover",
    }
    redis_servers: list[RedisServer] = [redis_a, redis_b, redis_c, redis_d, redis_e]
    summary.append(f"Redis master   {redis_a.url}  (replicas b, c; backup d -> e in the failover region)")

    pg1 = start_primary(stack, "pg-1", archive=True)
    pg2 = start_replica(stack, pg1, "pg-2")
    pg3 = start_replica(stack, pg1, "pg-3")
    pgdr = start_replica(stack, pg1, "pg-dr")
    summary.append(
        f"PostgreSQL     primary 127.0.0.1:{pg1.port}, replicas {pg2.port} {pg3.port}, DR {pgdr.port}"
    )

    secrets_dir = stack.directory("secrets")
    (secrets_dir / "redis").write_text(password)
    (secrets_dir / "pg").write_text(pg1.monitor_password)
    os.chmod(secrets_dir / "redis", 0o600)
    os.chmod(secrets_dir / "pg", 0o600)

    cache: dict[str, Any] = {
        "name": "cache-main",
        "tier": "redis",
        "password_file": str(secrets_dir / "redis"),
        "targets": [{"name": s.name, "region": redis_regions[s.name], "url": s.url} for s in redis_servers],
        "queues": [
            {"name": "jobs", "kind": "list"},
            {"name": "emails", "kind": "bullmq"},
            {"name": "events", "kind": "stream"},
        ],
    }
    if sentinel:
        sentinels = start_sentinels(
            stack, redis_a, n=3, quorum=2, master_name="cache-main", down_after_ms=5000
        )
        cache["sentinel"] = {
            "master_name": "cache-main",
            "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in sentinels],
        }
        summary.append("Sentinel       3 sentinels, quorum 2, down-after 5 s")
    config = {
        "monitor": {"interval": "5s", "timeout": "2s"},
        "circuit_breaker": {"failure_threshold": 5, "reset_timeout": "30s"},
        "clusters": [
            {"name": "edge", "tier": "lb", "vip": vip.url, "targets": [
                {"name": lb.name, "region": "primary", "url": lb.url, "stats_socket": str(lb.stats_socket)}
                for lb in lbs]},
            {"name": "web", "tier": "app", "targets": [
                {"name": n, "region": regions[n], "url": a.url} for n, a in apps.items()]},
            cache,
            {"name": "main-db", "tier": "postgres", "password_file": str(secrets_dir / "pg"), "targets": [
                {"name": s.name, "region": "failover" if s is pgdr else "primary",
                 "url": s.dsn_without_password}
                for s in (pg1, pg2, pg3, pgdr)]},
        ],
    }  # fmt: skip
    path = stack.path("tierwatch.yml")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return DemoStack(stack, path, summary)


def run(listen: str = "127.0.0.1:9489", sentinel: bool = False) -> int:
    """Start the demo and the exporter; block until Ctrl-C; stop everything."""
    missing = missing_packages()
    if missing:
        print(
            f"tierwatch demo: missing Debian packages: {' '.join(missing)}\n"
            f"install them with: apt-get install {' '.join(missing)}  (or run ./scripts/setup)",
            file=sys.stderr,
        )
        return 1
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    stack = Stack()
    try:
        print(
            "tierwatch demo: starting the stack (HAProxy pair, app servers, Redis, PostgreSQL)...", flush=True
        )
        demo = build(stack, sentinel=sentinel)
        print(
            "\n".join(
                [
                    "",
                    *demo.summary,
                    "",
                    f"Exporter       http://{listen}/  (status page), http://{listen}/metrics",
                    f"Config         {demo.config_path}",
                    "Stop           Ctrl-C (stops every process and removes the data)",
                    "",
                ]
            ),
            flush=True,
        )
        asyncio.run(run_exporter(load_config(demo.config_path), listen))
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        print(f"tierwatch demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.close()
        signal.signal(signal.SIGTERM, previous)
        print("tierwatch demo: stopped; every process and data directory removed.", flush=True)
    return 0
