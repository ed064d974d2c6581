"""``tierwatch serve`` as users run it: a real process scraped over HTTP, checked by promtool, with
secrets absent from /metrics, the status page and the logs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tierwatch_lab.stack import ManagedProcess, Stack, free_port, wait_for
from tierwatch_lab.stack.haproxy import start_haproxy, start_vip
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tierwatch import start_exporter

from helpers import metric_value as value
from helpers import terminate

SECRET = "Sup3r-S3cret-redis-pw"


@pytest.fixture
def exporter(
    stack: Stack, write_config: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> Iterator[tuple[str, ManagedProcess, Stack]]:
    app = start_http_backend(stack, "es-1")
    hanging = start_http_backend(stack, "es-2")
    hanging.set_mode("hang")
    lb1 = start_haproxy(stack, "lb-1", [("es-1", app.port), ("es-2", hanging.port)])
    lb2 = start_haproxy(stack, "lb-2", [("es-1", app.port), ("es-2", hanging.port)])
    vip = start_vip(stack, [lb1, lb2])
    secret_file = tmp_path / "redis-password"
    secret_file.write_text(SECRET + "\n")
    config = write_config(
        {
            "monitor": {"interval": "1s", "timeout": "500ms"},
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
                        for lb in (lb1, lb2)
                    ],
                },
                {
                    "name": "web",
                    "tier": "app",
                    "targets": [
                        {"name": "es-1", "region": "primary", "url": app.url},
                        {"name": "es-2", "region": "failover", "url": hanging.url},
                    ],
                },
                {
                    "name": "cache-main",
                    "tier": "redis",
                    "password_file": str(secret_file),
                    "targets": [
                        {
                            "name": "redis-a",
                            "region": "primary",
                            "url": f"redis://tierwatch@127.0.0.1:{free_port()}",
                        }
                    ],
                },
            ],
        }
    )
    exporter = start_exporter(stack, config)
    yield exporter.url, exporter.process, stack


def test_endpoints_promtool_and_no_secrets(exporter: tuple[str, ManagedProcess, Stack]) -> None:
    base, proc, _ = exporter
    assert httpx.get(base + "/health").text == "ok\n"
    assert httpx.post(base + "/metrics").status_code == 405
    assert httpx.get(base + "/nope").status_code == 404
    # let the hanging target time out at least twice, so failure counters and events exist
    wait_for(
        lambda: (
            (
                value(
                    httpx.get(base + "/metrics").text,
                    "tierwatch_probe_failures_total",
                    target="es-2",
                    reason="timeout",
                )
                or 0
            )
            >= 2
        ),
        20,
        "two timeouts of es-2",
    )
    metrics = httpx.get(base + "/metrics")
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert value(text, "tierwatch_up", target="es-1") == 1
    assert value(text, "tierwatch_up", target="es-2") == 0
    assert value(text, "tierwatch_up", target="redis-a") == 0
    assert value(text, "tierwatch_probe_failures_total", target="redis-a", reason="refused") >= 1
    assert value(text, "tierwatch_role", target="lb-1", role="active") == 1
    assert value(text, "tierwatch_build_info") == 1
    assert value(text, "tierwatch_probe_rounds_total") >= 2
    assert value(text, "tierwatch_probe_round_duration_seconds") is not None
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is required"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == "" and check.stderr.strip() == "", check.stdout + check.stderr
    openmetrics = httpx.get(
        base + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")

    page = httpx.get(base + "/")
    assert page.headers["content-type"].startswith("text/html")
    for name in ("edge", "web", "cache-main", "lb-1", "lb-2", "es-1", "es-2", "redis-a"):
        assert f">{name}" in page.text
    assert "VIP served by lb-1" in page.text
    assert "DOWN" in page.text and "UP" in page.text
    for body in (text, openmetrics.text, page.text):
        assert SECRET not in body

    code, out = terminate(proc)
    assert code == 0, out
    assert SECRET not in out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names[0] == "exporter_started" and names[-1] == "exporter_stopped"
    down = [e for e in events if e["event"] == "target_down"]
    # one event per state change, not one per probe: es-2 and redis-a went down once each
    assert sorted(e["target"] for e in down) == ["es-2", "redis-a"]
    assert {e["reason"] for e in down} == {"timeout", "refused"}


def test_sigterm_stops_promptly_with_a_hanging_target(
    exporter: tuple[str, ManagedProcess, Stack],
) -> None:
    _, proc, _ = exporter
    started = time.monotonic()
    code, _ = terminate(proc, timeout=15)
    assert code == 0
    # bounded by one probe timeout (500 ms) plus shutdown; generous bound against a hang, not a benchmark
    assert time.monotonic() - started < 10


def test_serve_reports_a_bad_config_and_exits_nonzero(write_config: Callable[[dict[str, Any]], Path]) -> None:
    path = write_config({"clusters": []})
    result = subprocess.run(
        [sys.executable, "-m", "tierwatch", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{path}:1: clusters: list should have at least 1 item" in result.stderr
