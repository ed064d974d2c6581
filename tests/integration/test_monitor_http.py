"""The monitor against real HTTP backends: healthy, refused, hanging, slow and flapping targets, the
circuit breaker, scrapes that never wait on a target, and no leaked sockets or tasks."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch_lab.stack import Stack, free_port
from tierwatch_lab.stack.http import HttpBackend, start_http_backend

from helpers import connections_to, open_fds
from helpers import metric_value as value


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def app_cluster(*targets: tuple[str, str]) -> dict[str, Any]:
    return {
        "name": "web",
        "tier": "app",
        "targets": [{"name": name, "region": "primary", "url": url} for name, url in targets],
    }


def requests_seen(backend: HttpBackend) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{backend.port}/_stats", timeout=5) as resp:
        text = resp.read().decode()
    return int(text.split()[0].split("=")[1])


def connections_seen(backend: HttpBackend) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{backend.port}/_stats", timeout=5) as resp:
        text = resp.read().decode()
    return int(text.split()[1].split("=")[1])


def scrape(monitor: Monitor) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    return generate_latest(registry).decode()


def run_rounds(monitor: Monitor, count: int, between: Callable[[int], None] | None = None) -> None:
    async def go() -> None:
        for i in range(count):
            await monitor.run_round()
            if between:
                between(i)
        await monitor.close()

    asyncio.run(go())


@pytest.mark.parametrize("histogram", [False, True], ids=["default", "per-target-histogram"])
def test_healthy_refused_hanging_and_slow_targets(
    stack: Stack, make_config: Callable[..., LoadedConfig], histogram: bool
) -> None:
    healthy = start_http_backend(stack, "healthy")
    hanging = start_http_backend(stack, "hanging")
    hanging.set_mode("hang")
    slow = start_http_backend(stack, "slow")
    slow.set_mode("slow", delay=0.2)
    too_slow = start_http_backend(stack, "too-slow")
    too_slow.set_mode("slow", delay=2.0)
    refused_url = f"http://127.0.0.1:{free_port()}/health"
    loaded = make_config(
        [
            app_cluster(
                ("es-ok", healthy.url),
                ("es-refused", refused_url),
                ("es-hang", hanging.url),
                ("es-slow", slow.url),
                ("es-too-slow", too_slow.url),
            )
        ],
        interval="2s",
        timeout="700ms",
        metrics={"probe_duration_histogram": histogram},
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    connections_before = connections_seen(healthy)
    run_rounds(monitor, 2)
    text = scrape(monitor)
    assert value(text, "tierwatch_up", target="es-ok") == 1
    assert value(text, "tierwatch_up", target="es-slow") == 1
    for target in ("es-refused", "es-hang", "es-too-slow"):
        assert value(text, "tierwatch_up", target=target) == 0, target
    assert value(text, "tierwatch_probe_failures_total", target="es-refused", reason="refused") == 2
    assert value(text, "tierwatch_probe_failures_total", target="es-hang", reason="timeout") == 2
    assert value(text, "tierwatch_probe_failures_total", target="es-too-slow", reason="timeout") == 2
    assert value(text, "tierwatch_probe_failures_total", target="es-ok", reason="timeout") == 0
    # the last probe's duration: the slow target's 200 ms, the hanging one's 700 ms timeout
    slow_duration = value(text, "tierwatch_probe_last_duration_seconds", target="es-slow")
    assert slow_duration is not None and 0.2 <= slow_duration < 0.5
    hang_duration = value(text, "tierwatch_probe_last_duration_seconds", target="es-hang")
    assert hang_duration is not None and 0.7 <= hang_duration < 1.0
    assert value(text, "tierwatch_probes_total", target="es-hang") == 2
    # the region's histogram: ok and refused (4 probes) under 0.1 s, slow (2) under 0.5 s, the two
    # timeouts (4) under 1 s
    region = {"tier": "app", "cluster": "web", "region": "primary"}
    buckets = [
        value(text, "tierwatch_cluster_probe_duration_seconds_bucket", le=le, **region)
        for le in ("0.1", "0.5", "1")
    ]
    assert buckets == [4, 6, 10]
    assert value(text, "tierwatch_cluster_probe_duration_seconds_count", **region) == 10
    # per target only when asked for: the slow target's 200 ms above 0.1 s, not below
    assert value(text, "tierwatch_probe_duration_seconds_bucket", target="es-slow", le="0.1") == (
        0 if histogram else None
    )
    assert value(text, "tierwatch_probe_duration_seconds_bucket", target="es-slow", le="0.5") == (
        2 if histogram else None
    )
    assert value(text, "tierwatch_probe_duration_seconds_count", target="es-hang") == (
        2 if histogram else None
    )
    assert value(text, "tierwatch_http_status_code", target="es-ok") == 200
    assert value(text, "tierwatch_last_probe_timestamp_seconds", target="es-ok") is not None
    assert value(text, "tierwatch_targets", tier="app", state="up") == 2
    assert value(text, "tierwatch_targets", tier="app", state="down") == 3
    # the healthy target was probed twice over one kept-alive connection
    assert connections_seen(healthy) - connections_before == 2  # the probes' one + this stats request's


def test_expectations_on_status_and_body(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    backend = start_http_backend(stack, "b")
    cluster = {
        "name": "web",
        "tier": "app",
        "targets": [
            {"name": "body-ok", "region": "r", "url": backend.url, "expect_body": "^ok b"},
            {"name": "body-bad", "region": "r", "url": backend.url, "expect_body": "healthy"},
            {"name": "want-503", "region": "r", "url": backend.url, "expect_status": [503]},
        ],
    }
    monitor = Monitor(make_config([cluster]), EventLog(stream=io.StringIO()))
    run_rounds(monitor, 1)
    text = scrape(monitor)
    assert value(text, "tierwatch_up", target="body-ok") == 1
    assert value(text, "tierwatch_up", target="body-bad") == 0
    assert value(text, "tierwatch_probe_failures_total", target="body-bad", reason="protocol") == 1
    assert value(text, "tierwatch_up", target="want-503") == 0
    backend.set_mode("error")
    run_rounds(monitor, 1)
    text = scrape(monitor)
    assert value(text, "tierwatch_up", target="want-503") == 1
    assert value(text, "tierwatch_up", target="body-ok") == 0


def test_breaker_opens_stops_contacting_and_closes_after_trial(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    backend = start_http_backend(stack, "sick")
    backend.set_mode("error")
    clock = FakeClock()
    log = io.StringIO()
    loaded = make_config([app_cluster(("es-sick", backend.url))], reset_timeout="30s")
    monitor = Monitor(loaded, EventLog("json", stream=log), clock=clock)
    state = monitor.states[0]

    async def scenario() -> None:
        for _ in range(4):
            await monitor.run_round()
        assert state.breaker.state == "closed"
        await monitor.run_round()
        assert state.breaker.state == "open"
        seen = requests_seen(backend)
        assert seen == 5
        for _ in range(3):
            clock.now += 5
            await monitor.run_round()
        assert requests_seen(backend) == seen, "an open circuit must not contact the target"
        text = scrape(monitor)
        assert value(text, "tierwatch_circuit_state", target="es-sick", state="open") == 1
        assert value(text, "tierwatch_circuit_state", target="es-sick", state="closed") == 0
        assert value(text, "tierwatch_up", target="es-sick") == 0
        backend.set_mode("healthy")
        clock.now += 15  # 30 s since opening: the next round is the half-open trial
        await monitor.run_round()
        assert requests_seen(backend) == seen + 1
        assert state.breaker.state == "closed" and state.up
        await monitor.close()

    asyncio.run(scenario())
    events = [json.loads(line)["event"] for line in log.getvalue().splitlines()]
    assert events == ["target_down", "circuit_open", "circuit_half_open", "circuit_closed", "target_up"]


def test_failed_half_open_trial_reopens(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    backend = start_http_backend(stack, "sick")
    backend.set_mode("error")
    clock = FakeClock()
    loaded = make_config([app_cluster(("es-sick", backend.url))], failure_threshold=2, reset_timeout="10s")
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()), clock=clock)

    async def scenario() -> None:
        await monitor.run_round()
        await monitor.run_round()
        assert monitor.states[0].breaker.state == "open"
        clock.now += 10
        await monitor.run_round()
        assert monitor.states[0].breaker.state == "open"
        assert requests_seen(backend) == 3
        clock.now += 5
        await monitor.run_round()
        assert requests_seen(backend) == 3
        await monitor.close()

    asyncio.run(scenario())


def test_flapping_target_logs_one_event_per_change(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    backend = start_http_backend(stack, "flappy")
    log = io.StringIO()
    loaded = make_config([app_cluster(("es-flap", backend.url))], failure_threshold=100)
    monitor = Monitor(loaded, EventLog("json", stream=log))
    modes = ["healthy", "healthy", "error", "error", "error", "healthy", "error", "healthy", "healthy"]

    async def scenario() -> None:
        for mode in modes:
            backend.set_mode(mode)
            await monitor.run_round()
        await monitor.close()

    asyncio.run(scenario())
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [r["event"] for r in records] == [
        "target_up",
        "target_down",
        "target_up",
        "target_down",
        "target_up",
    ]
    down = records[1]
    assert down["reason"] == "protocol" and down["target"] == "es-flap" and down["cluster"] == "web"
    assert down["tier"] == "app" and down["region"] == "primary" and down["level"] == "warning"
    text = scrape(monitor)
    assert value(text, "tierwatch_probe_failures_total", target="es-flap", reason="protocol") == 4


def test_scrape_returns_while_a_probe_hangs(stack: Stack, make_config: Callable[..., LoadedConfig]) -> None:
    hanging = start_http_backend(stack, "hanging")
    healthy = start_http_backend(stack, "healthy")
    loaded = make_config([app_cluster(("es-ok", healthy.url))])
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    run_rounds(monitor, 1)
    hanging.set_mode("hang")
    loaded = make_config(
        [app_cluster(("es-ok", healthy.url), ("es-hang", hanging.url))], interval="10s", timeout="5s"
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))

    async def scenario() -> str:
        await monitor.run_round()
        hanging_before = requests_seen(hanging)
        round_task = asyncio.create_task(monitor.run_round())
        for _ in range(500):  # until the hanging target holds the probe's request
            await asyncio.sleep(0.01)
            if await asyncio.to_thread(requests_seen, hanging) > hanging_before:
                break
        text = scrape(monitor)
        assert not round_task.done(), "the probe should still be hanging"
        round_task.cancel()
        await asyncio.gather(round_task, return_exceptions=True)
        await monitor.close()
        return text

    text = asyncio.run(scenario())
    assert value(text, "tierwatch_up", target="es-ok") == 1
    assert value(text, "tierwatch_probe_failures_total", target="es-hang", reason="timeout") == 1


def test_no_leaks_when_targets_die_hang_and_come_back(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    backends = [start_http_backend(stack, f"b{i}") for i in range(4)]
    ports = {b.port for b in backends}
    loaded = make_config(
        [app_cluster(*((f"es-{i}", b.url) for i, b in enumerate(backends)))],
        timeout="300ms",
        failure_threshold=1000,
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
    seen: list[tuple[int, int]] = []

    def snapshot() -> None:
        seen.append((connections_to(ports), open_fds()))

    async def scenario() -> int:
        for _ in range(3):
            await monitor.run_round()
        snapshot()
        backends[0].set_mode("hang")
        backends[1].process.pause()
        backends[2].process.kill()
        for _ in range(6):
            await monitor.run_round()
        snapshot()
        backends[0].set_mode("healthy")
        backends[1].process.resume()
        for _ in range(3):
            await monitor.run_round()
        snapshot()
        tasks = len(asyncio.all_tasks()) - 1
        await monitor.close()
        snapshot()
        return tasks

    leftover_tasks = asyncio.run(scenario())
    assert leftover_tasks == 0
    (steady, fds_steady), (during, _fds_during), (after, fds_after), (closed, fds_closed) = seen
    assert steady == 4  # one kept-alive connection per target
    assert during == 1  # only the healthy target: failed probes dropped their connections
    assert after == 3  # reconnected to the two that came back; the killed one is gone for good
    assert closed == 0  # every probe connection closed
    assert fds_after <= fds_steady and fds_closed <= fds_steady - 4
    states = {s.info.name: s for s in monitor.states}
    assert states["es-0"].up and states["es-1"].up and not states["es-2"].up and states["es-3"].up
