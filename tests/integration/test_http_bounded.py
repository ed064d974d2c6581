"""Every HTTP read of a target is bounded: hostile targets (endless bodies, a 10 GB Content-Length,
garbage instead of HTTP, endless headers) cost at most the body cap, whether the exporter probes them
or a recovery action checks them; redirects are followed with a limit and loops are failures."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

from hostile_peers import HostileHttp, start_hostile_http
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.clients.http import answer_problem
from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.recovery.actions import load_action
from tierwatch_lab.stack import Stack

from action_fixtures import make_context
from helpers import metric_value as value

RSS_BUDGET_MB = 50


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def scrape(monitor: Monitor) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    return generate_latest(registry).decode()


def app_target(hostile: HostileHttp, name: str, path: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "region": "primary", "url": hostile.url(path), **options}


def probe_rounds(loaded: LoadedConfig, rounds: int) -> tuple[str, Monitor, float]:
    """Run ``rounds`` probe rounds; returns the scrape, the monitor and the longest round (s)."""
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    longest = 0.0

    async def go() -> None:
        nonlocal longest
        for _ in range(rounds):
            started = time.monotonic()
            await monitor.run_round()
            longest = max(longest, time.monotonic() - started)
        await monitor.close()

    asyncio.run(go())
    return scrape(monitor), monitor, longest


def test_hostile_targets_are_down_with_a_reason_and_cost_at_most_the_cap(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    hostile = start_hostile_http(stack)
    healthy = {"expect_body": "^healthy"}
    targets = [
        app_target(hostile, "endless-inspected", "/endless", expect_body="healthy"),
        app_target(hostile, "endless", "/endless"),
        app_target(hostile, "huge-inspected", "/huge", expect_body="healthy"),
        app_target(hostile, "huge", "/huge"),
        app_target(hostile, "trickle-inspected", "/trickle", expect_body="^never"),
        app_target(hostile, "garbage", "/garbage"),
        app_target(hostile, "endless-headers", "/endless-headers"),
        app_target(hostile, "big-page", "/big-ok", **healthy),
        app_target(hostile, "big-page-small-cap", "/big-ok", max_body_bytes=1024, **healthy),
    ]
    # the declared size of the huge body shows in the (opt-in) response size
    loaded = make_config(
        [{"name": "web", "tier": "app", "targets": targets}],
        interval="3s",
        timeout="1s",
        metrics={"http_response_size": True},
    )
    reset_peak_rss()
    before = rss_mb("VmRSS")
    text, monitor, longest = probe_rounds(loaded, 3)
    growth = rss_mb("VmHWM") - before
    assert growth < RSS_BUDGET_MB, f"peak RSS grew by {growth:.0f} MB"
    assert longest < 2.5, "a probe ran past its deadline"

    def down(target: str, reason: str) -> None:
        assert value(text, "tierwatch_up", target=target) == 0, target
        assert value(text, "tierwatch_probe_failures_total", target=target, reason=reason) == 3, target

    # the body must be inspected: no match within the cap is a protocol failure
    down("endless-inspected", "protocol")
    down("huge-inspected", "protocol")
    # a body that trickles in never reaches the cap: the probe's deadline ends it
    down("trickle-inspected", "timeout")
    down("garbage", "protocol")
    down("endless-headers", "protocol")
    # the status is known from the headers and nothing needs the body: up, the rest left unread
    for target in ("endless", "huge", "big-page", "big-page-small-cap"):
        assert value(text, "tierwatch_up", target=target) == 1, target
    assert value(text, "tierwatch_http_response_size_bytes", target="huge") == 10 * 1024**3
    errors = {s.info.name: s.last_error for s in monitor.states}
    no_match = "protocol: body did not match expect_body within the first 65536 bytes"
    assert errors["endless-inspected"] == no_match


def test_redirects_are_followed_with_a_limit(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    hostile = start_hostile_http(stack)
    targets = [
        app_target(hostile, "loop", "/loop"),
        app_target(hostile, "endless-chain", "/hop/0"),
        app_target(hostile, "one-redirect", "/redirect"),
        app_target(hostile, "redirect-endless-body", "/redirect-endless"),
        app_target(hostile, "not-followed", "/redirect", follow_redirects=False),
        app_target(hostile, "not-followed-allowed", "/redirect", follow_redirects=False, expect_status=[302]),
    ]
    loaded = make_config([{"name": "web", "tier": "app", "targets": targets}], interval="3s", timeout="1s")
    text, monitor, _ = probe_rounds(loaded, 1)
    errors = {s.info.name: s.last_error for s in monitor.states}
    for target in ("loop", "endless-chain", "not-followed"):
        assert value(text, "tierwatch_up", target=target) == 0, target
        assert value(text, "tierwatch_probe_failures_total", target=target, reason="protocol") == 1, target
    assert errors["loop"] == "protocol: redirect loop"
    assert errors["endless-chain"] == "protocol: more than 10 redirects"
    assert errors["not-followed"] == "protocol: unexpected status 302"
    for target in ("one-redirect", "redirect-endless-body"):
        assert value(text, "tierwatch_up", target=target) == 1, target
        assert value(text, "tierwatch_http_status_code", target=target) == 200, target
    assert value(text, "tierwatch_up", target="not-followed-allowed") == 1
    assert value(text, "tierwatch_http_status_code", target="not-followed-allowed") == 302


def test_recovery_reads_are_bounded_too(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    """The live checks of the actions, the LB stats page, the VIP probe and cache warm-up read the same
    bounded way."""
    hostile = start_hostile_http(stack)
    app = {
        "name": "web",
        "tier": "app",
        "targets": [
            app_target(hostile, "es-endless", "/endless", expect_body="healthy"),
            app_target(hostile, "es-garbage", "/garbage"),
            app_target(hostile, "es-ok", "/big-ok", expect_body="^healthy"),
        ],
    }
    lb = {  # a healthy health URL, a stats page and a VIP whose bodies never end
        "name": "edge",
        "tier": "lb",
        "vip": hostile.url("/endless"),
        "targets": [
            {
                "name": "lb-1",
                "region": "primary",
                "url": hostile.url("/ok"),
                "stats_url": hostile.url("/endless"),
            }
        ],
    }
    loaded = make_config([app, lb], interval="3s", timeout="1s")
    urls = [hostile.url(p) for p in ("/endless", "/huge", "/garbage", "/endless-headers", "/ok")]
    command = ["sh", "-c", f"echo restarted >> {stack.path('restarted')}"]
    restart = ClusterRecovery(restart_commands={"es-ok": command}, warmup_urls=urls)

    reset_peak_rss()
    before = rss_mb("VmRSS")

    async def checks() -> dict[str, str | None]:
        targets = {t.name: t for t in loaded.config.clusters[0].targets}
        return {name: await answer_problem(t, 1.0) for name, t in targets.items()}

    problems = asyncio.run(checks())
    text, monitor, _ = probe_rounds(loaded, 2)
    ctx, _ = make_context(loaded, "web", {"target": "es-ok"}, settings=restart)
    restart_outcome = asyncio.run(load_action("restart_instance").run(ctx))
    ctx, _ = make_context(loaded, "web", {}, settings=restart)
    warmup_outcome = asyncio.run(load_action("cache_warmup").run(ctx))
    growth = rss_mb("VmHWM") - before
    assert growth < RSS_BUDGET_MB, f"peak RSS grew by {growth:.0f} MB"

    assert problems["es-endless"] == "protocol: body did not match expect_body within the first 65536 bytes"
    assert problems["es-garbage"] is not None and problems["es-garbage"].startswith("protocol")
    assert problems["es-ok"] is None
    assert restart_outcome.status == "refused" and "answers" in restart_outcome.detail
    assert warmup_outcome.status == "failed" and warmup_outcome.detail.startswith("2 of 5 warm-up requests")
    # the LB answers its health URL, but a stats page over max_stats_bytes is a protocol failure
    assert value(text, "tierwatch_up", target="lb-1") == 0
    assert value(text, "tierwatch_probe_failures_total", target="lb-1", reason="protocol") == 2
    # the VIP answered 200 (its status is all it needs): up, its endless body left unread
    assert value(text, "tierwatch_lb_vip_up", cluster="edge") == 1
    lb_state = next(s for s in monitor.states if s.info.name == "lb-1")
    assert lb_state.last_error == "protocol: stats page: body larger than 4194304 bytes"
