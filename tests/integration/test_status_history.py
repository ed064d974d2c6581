"""History on the status pages, against real servers: the monitor records a flapping target's changes
(up/down, circuit) and probe durations; headless Chromium screenshots of the exporter's status page
and target page after a real Redis went down and came back, and of the recovery service's decisions
page over an audit trail its writer wrote, checked from their pixels."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from browser import count_colour, screenshot
from PIL import Image, ImageChops

from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.monitor import Monitor
from tierwatch.recovery.audit import AuditTrail
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

from recovery_fixtures import alert, launch, payload

Rgb = tuple[int, int, int]
RED: Rgb = (0xC6, 0x28, 0x28)  # down (state, history, a failed probe), a failed decision
GREEN: Rgb = (0x2E, 0x7D, 0x32)  # up, closed, a decision that succeeded
BLUE: Rgb = (0x15, 0x65, 0xC0)  # the sparkline, a dry-run decision
ORANGE: Rgb = (0xEF, 0x6C, 0x00)  # a decision held back (blocked, refused)


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def bbox(
    image: Image.Image, colour: Rgb, box: tuple[int, int, int, int] | None = None
) -> tuple[int, ...] | None:
    """The bounding box (left, top, right, bottom) of the pixels of ``colour`` ± 24 (within ``box``)."""
    region = image.crop(box) if box else image
    masks = [
        band.point(lambda v, c=c: 255 if abs(v - c) <= 24 else 0)
        for band, c in zip(region.split(), colour, strict=True)
    ]
    found = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2]).getbbox()
    if found is None:
        return None
    left, top = (box[0], box[1]) if box else (0, 0)
    return (found[0] + left, found[1] + top, found[2] + left, found[3] + top)


def test_the_monitor_records_a_flapping_targets_changes_and_durations(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    backend = start_http_backend(stack, "flappy")
    cluster = {
        "name": "web",
        "tier": "app",
        "targets": [{"name": "es-1", "region": "primary", "url": backend.url}],
    }
    clock = FakeClock()
    loaded = make_config([cluster], failure_threshold=2, reset_timeout="30s")
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()), clock=clock)
    state = monitor.states[0]

    async def scenario() -> None:
        await monitor.run_round()  # up
        backend.set_mode("error")
        for _ in range(3):  # down, open after the second failure, then not contacted
            await monitor.run_round()
        backend.set_mode("healthy")
        clock.now += 31  # the half-open trial succeeds
        await monitor.run_round()
        await monitor.close()

    asyncio.run(scenario())
    changes = [(c.kind, c.before, c.after) for c in reversed(state.history.changes())]
    assert changes == [
        ("status", "unknown", "up"),
        ("status", "up", "down"),
        ("circuit", "closed", "open"),
        ("circuit", "open", "half_open"),
        ("circuit", "half_open", "closed"),
        ("status", "down", "up"),
    ]
    down = state.history.changes()[-2]
    assert down.detail is not None and down.detail.startswith("protocol")
    marks = state.history.probes()
    assert [m.ok for m in marks] == [True, False, False, True]  # the open circuit's round probed nothing
    assert all(0 < m.seconds < 0.5 for m in marks)


def test_the_monitor_records_a_role_change(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    primary = start_redis(stack, "redis-a")
    replica = start_redis(stack, "redis-b", replica_of=primary)
    targets = [{"name": s.name, "region": "primary", "url": s.url} for s in (primary, replica)]
    loaded = make_config([{"name": "cache-main", "tier": "redis", "targets": targets}])
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))

    async def scenario() -> None:
        await monitor.run_round()
        replica.client().execute_command("REPLICAOF", "NO", "ONE")  # promoted by hand, as a failover would
        await monitor.run_round()
        await monitor.close()

    asyncio.run(scenario())
    promoted = monitor.state_of("redis-b")
    assert promoted is not None
    assert [(c.kind, c.before, c.after) for c in promoted.history.changes()] == [
        ("role", "replica", "primary"),
        ("status", "unknown", "up"),
    ]


def test_status_page_after_a_redis_flap_in_chromium(
    stack: Stack, write_config: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    redis = start_redis(stack, "redis-a")
    config = write_config(
        {
            "monitor": {"interval": "1s", "timeout": "500ms"},
            "circuit_breaker": {"failure_threshold": 2, "reset_timeout": "2s"},
            "clusters": [
                {
                    "name": "cache-main",
                    "tier": "redis",
                    "targets": [{"name": "redis-a", "region": "primary", "url": redis.url}],
                }
            ],
        }
    )
    exporter = start_exporter(stack, config)
    target_page = exporter.url + "/target?name=redis-a"

    def shows(*words: str) -> bool:
        text = httpx.get(target_page, timeout=5).text
        return all(word in text for word in words)

    wait_for(lambda: shows(">UP<"), 20, "redis-a up")
    redis.process.stop()
    wait_for(lambda: shows(">DOWN<", ">open<"), 20, "redis-a down, its circuit open")
    redis.process.start()
    wait_for(lambda: shows(">UP<", ">closed<"), 30, "redis-a up again, its circuit closed")

    def probes_since_up() -> bool:
        found = re.search(r"(\d+) probes shown, (\d+) failed", httpx.get(target_page, timeout=5).text)
        return found is not None and int(found[1]) - int(found[2]) >= 8

    wait_for(probes_since_up, 30, "successful probes to draw a line")

    overview = screenshot(exporter.url + "/", tmp_path / "status.png", 1280, 500)
    badge = bbox(overview, GREEN, (0, 0, 100, 500))  # the UP badge in the state column
    assert badge is not None
    below = (0, badge[3] + 2, 1280, 500)  # the history row under the target's row
    assert count_colour(overview, RED, box=below) > 30, "no down change in the history"
    assert count_colour(overview, GREEN, box=below) > 30, "no up/closed change in the history"
    row = (0, badge[1], 1280, badge[3])
    spark = bbox(overview, BLUE, row)
    assert spark is not None and spark[2] - spark[0] >= 10, "no sparkline in the latency cell"
    assert count_colour(overview, RED, box=row) > 0, "the failed probes are not drawn in the sparkline"

    page = screenshot(target_page, tmp_path / "target.png", 1000, 700)
    line = bbox(page, BLUE)
    assert line is not None and line[2] - line[0] >= 100, f"the sparkline spans {line}"
    ticks = bbox(page, RED, (line[0] - 20, line[1] - 10, line[2] + 20, line[3] + 10))
    assert ticks is not None, "no failed probe in the sparkline"
    table = (0, line[3] + 30, 1000, 700)  # the changes, under the latency section
    assert count_colour(page, RED, box=table) > 30, "no down/open change in the table"
    assert count_colour(page, GREEN, box=table) > 30, "no up/closed change in the table"
    assert count_colour(page, ORANGE, box=table) > 30, "no half-open change in the table"


def test_decisions_page_in_chromium(stack: Stack, tmp_path: Path) -> None:
    state_dir = stack.directory("recovery-state")
    base = {"cluster": "cache-main", "target": "redis-a", "key": "k"}
    trail = AuditTrail(state_dir / "audit.jsonl")  # the service's own writer, before it starts
    try:
        for outcome, detail in (("succeeded", "promoted redis-b"), ("failed", "action raised OSError")):
            trail.record(
                "outcome",
                **base,
                alert="RedisMasterDown",
                action="redis_failover",
                outcome=outcome,
                detail=detail,
            )
        trail.record(
            "outcome",
            **base,
            alert="<b>Hostile</b>",
            action="redis_failover",
            outcome="dry_run",
            detail="<i>x</i>",
        )
    finally:
        trail.close()
    password = stack.path("secrets", "password")
    password.write_text("decisions-Pa55\n")
    config = stack.path("recover.yml")
    recovery = {
        "state_dir": str(state_dir),
        "auth": {"basic": {"username": "ops", "password_file": str(password)}},
        "allow": {"AppInstanceDown": "restart_instance"},
    }
    clusters = [
        {
            "name": "web",
            "tier": "app",
            "targets": [{"name": "es-1", "region": "primary", "url": "http://127.0.0.1:1/"}],
        }
    ]
    config.write_text(yaml.safe_dump({"clusters": clusters, "recovery": recovery}, sort_keys=False))
    service = launch(stack, config, state_dir)
    auth = ("ops", "decisions-Pa55")
    # a decision the service makes itself: an alert no action is allowed for, held back (orange)
    labels = {
        "tier": "app",
        "cluster": "web",
        "target": "es-1",
        "region": "primary",
        "action": "restart_instance",
    }
    sent = httpx.post(
        service.url + "/webhook", json=payload(alert("NotAllowedAlert", labels)), auth=auth, timeout=10
    )
    assert sent.status_code == 200
    wait_for(
        lambda: "NotAllowedAlert" in httpx.get(service.url + "/decisions", auth=auth).text, 20, "its decision"
    )

    refused = httpx.get(service.url + "/decisions", timeout=5)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert "RedisMasterDown" not in refused.text
    text = httpx.get(service.url + "/decisions", auth=auth, timeout=5).text
    assert "&lt;b&gt;Hostile&lt;/b&gt;" in text and "<b>Hostile" not in text and "decisions-Pa55" not in text

    url = service.url.replace("http://", "http://ops:decisions-Pa55@") + "/decisions"
    image = screenshot(url, tmp_path / "decisions.png", 1280, 500)
    for colour, what in ((GREEN, "succeeded"), (RED, "failed"), (BLUE, "dry_run"), (ORANGE, "blocked")):
        assert count_colour(image, colour) > 100, f"no {what} decision drawn"
    # newest first: the service's own decision (blocked) above the ones written before it started
    assert bbox(image, ORANGE)[1] < bbox(image, BLUE)[1] < bbox(image, RED)[1] < bbox(image, GREEN)[1]
    service.stop()
