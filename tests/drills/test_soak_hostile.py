"""Soak: the real exporter watches healthy Redis, PostgreSQL and HTTP targets beside hostile ones
(silent, trickling, garbage, endless body, huge bulk reply, huge PostgreSQL row, huge Content-Length,
accept-then-close, blackholed) for about two minutes, at the default monitor settings. Healthy
targets stay up in every scrape, every hostile target is down, /metrics p99 stays under 100 ms and the
exporter's peak RSS under 120 MB. (An HTTP body is read only up to the client's cap; a 200 with an endless
body is down here because its targets expect a body that the first bytes do not match.)

The hostile servers run in their own process; ``TIERWATCH_SOAK_SECONDS`` shortens the soak by hand."""

from __future__ import annotations

import http.client
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile_servers import hostile_process

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.postgres import start_primary
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("TIERWATCH_SOAK_SECONDS", "120"))
SCRAPE_EVERY = 0.5
RSS_LIMIT = 120_000_000
HOSTILE_REDIS = ("huge_bulk", "garbage", "trickle_redis", "silent", "accept_close", "blackhole")
HOSTILE_PG = ("pg_huge_row", "garbage", "trickle_redis", "silent", "accept_close", "blackhole")
HOSTILE_HTTP = (
    "endless_body",
    "huge_length",
    "trickle_http",
    "silent",
    "garbage",
    "accept_close",
    "blackhole",
)


def peak_rss_of(pid: int) -> int:
    """The process's peak RSS since it started (VmHWM: a peak between two samples counts too)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def scrape(port: int) -> tuple[str, float]:
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200
    finally:
        conn.close()
    return body, time.perf_counter() - began


def hostile_targets(
    prefix: str, kinds: tuple[str, ...], url: Callable[[int], str], ports: dict[str, int]
) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{kind}", "region": "primary", "url": url(ports[kind])} for kind in kinds]


def test_exporter_survives_hostile_targets(stack: Stack, write_config: Callable[..., Path]) -> None:
    primary = start_redis(stack, "redis-a")
    replica = start_redis(stack, "redis-b", replica_of=primary)
    pg = start_primary(stack, "pg-1")
    web = [start_http_backend(stack, f"web-{i}") for i in range(2)]
    password_file = stack.root / "pg-password"
    password_file.write_text(pg.monitor_password)
    password_file.chmod(0o600)
    healthy = ["redis-a", "redis-b", "pg-1", "web-0", "web-1"]

    with hostile_process() as ports:
        clusters = [
            {
                "name": "cache",
                "tier": "redis",
                "targets": [{"name": s.name, "region": "primary", "url": s.url} for s in (primary, replica)],
                "queues": [{"name": "jobs", "kind": "list"}, {"name": "default", "kind": "rq"}],
            },
            {
                "name": "db",
                "tier": "postgres",
                "password_file": str(password_file),
                "targets": [{"name": "pg-1", "region": "primary", "url": pg.dsn_without_password}],
            },
            {
                "name": "web",
                "tier": "app",
                "targets": [{"name": b.name, "region": "primary", "url": b.url} for b in web],
            },
            {
                "name": "evil-cache",
                "tier": "redis",
                "targets": hostile_targets("redis", HOSTILE_REDIS, lambda p: f"redis://127.0.0.1:{p}", ports),
            },
            {
                "name": "evil-db",
                "tier": "postgres",
                "targets": hostile_targets(
                    "pg", HOSTILE_PG, lambda p: f"postgresql://tierwatch@127.0.0.1:{p}/postgres", ports
                ),
            },
            {
                "name": "evil-web",
                "tier": "app",
                # a body is bounded by the HTTP client's cap; it fails the probe when it must be matched
                "targets": [
                    {**target, "expect_body": "ok"}
                    for target in hostile_targets(
                        "http", HOSTILE_HTTP, lambda p: f"http://127.0.0.1:{p}/health", ports
                    )
                ],
            },
        ]
        exporter = start_exporter(stack, write_config({"clusters": clusters}))
        assert exporter.process.popen is not None
        pid = exporter.process.popen.pid

        latencies: list[float] = []
        peak_rss = 0
        not_up: list[tuple[float, str]] = []
        text = ""
        began = time.monotonic()
        while time.monotonic() - began < SOAK_SECONDS:
            exporter.process.check_alive()
            text, took = scrape(exporter.port)
            latencies.append(took)
            peak_rss = peak_rss_of(pid)
            for name in healthy:
                if metric_value(text, "tierwatch_up", target=name) != 1.0:
                    not_up.append((round(time.monotonic() - began, 1), name))
            time.sleep(SCRAPE_EVERY)

        hostile_names = [t["name"] for c in clusters if c["name"].startswith("evil-") for t in c["targets"]]
        still_up = [name for name in hostile_names if metric_value(text, "tierwatch_up", target=name) != 0.0]
        unprobed = [
            name
            for name in hostile_names
            if (metric_value(text, "tierwatch_probes_total", target=name) or 0) < 1
        ]

    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(
        f"soak: {len(latencies)} scrapes, /metrics p99 {p99 * 1000:.1f} ms, peak RSS {peak_rss / 1e6:.1f} MB"
    )
    assert not not_up, f"healthy targets not up: {not_up[:20]}"
    assert p99 < 0.1, f"/metrics p99 {p99 * 1000:.1f} ms"
    assert peak_rss < RSS_LIMIT, f"exporter RSS peaked at {peak_rss / 1e6:.1f} MB"
    assert not unprobed, f"hostile targets never probed: {unprobed}"
    assert not still_up, f"hostile targets not down: {still_up}"
