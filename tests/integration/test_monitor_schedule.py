"""The monitor's schedule: probes spread over the interval at stable offsets, bounded concurrency, and
latencies that measure the target (not the event loop's queue); plus the small state helpers."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierwatch.config import LoadedConfig, load_config
from tierwatch.config.exporter import LogSettings
from tierwatch.events import EventLog
from tierwatch.monitor import PROBES_PER_WAKEUP, Monitor, batch_window, schedule_offset
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend


def app_cluster(name: str, urls: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "name": name,
        "tier": "app",
        "targets": [{"name": n, "region": "primary", "url": u} for n, u in urls],
    }


def quiet_monitor(loaded: LoadedConfig) -> Monitor:
    return Monitor(loaded, EventLog(stream=io.StringIO()))


def test_offsets_are_stable_spread_over_the_interval_and_differ_per_target(
    make_config: Callable[..., LoadedConfig],
) -> None:
    urls = [(f"app-{i}", f"http://127.0.0.1:9/{i}") for i in range(300)]
    loaded = make_config([app_cluster("web", urls)], interval="5s", timeout="2s")
    schedule = quiet_monitor(loaded).schedule()
    assert schedule == quiet_monitor(loaded).schedule()
    assert len(schedule) == 300
    offsets = [offset for offset, _ in schedule]
    assert all(0 <= offset < 5.0 for offset in offsets)
    assert len(set(offsets)) == 300
    tenths = [0] * 10
    for offset in offsets:
        tenths[int(offset / 0.5)] += 1
    assert all(10 <= count <= 50 for count in tenths), tenths
    assert schedule_offset("app-1", 5.0) == dict((n, o) for o, n in schedule)["app-1"]


def test_each_probe_starts_at_its_offset_and_a_slow_target_reads_its_own_latency(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    fast = start_http_backend(stack, "fast")
    slow = start_http_backend(stack, "slow")
    slow.set_mode("slow", 0.3)
    urls = [(f"app-{i}", fast.url) for i in range(200)]
    loaded = make_config(
        [app_cluster("web", urls), app_cluster("sluggish", [("slow-1", slow.url)])],
        interval="1s",
        timeout="900ms",
    )
    monitor = quiet_monitor(loaded)
    starts: dict[str, list[float]] = {}
    original = monitor._probe_and_record

    async def recording(target: Any) -> None:
        starts.setdefault(target.state.info.name, []).append(time.monotonic())
        await original(target)

    monitor._probe_and_record = recording  # type: ignore[method-assign]

    async def run() -> float:
        stop = asyncio.Event()
        began = time.monotonic()
        task = asyncio.create_task(monitor.run(stop))
        while monitor.rounds < 3:
            await asyncio.sleep(0.05)
            assert time.monotonic() - began < 30, "three rounds did not complete"
        stop.set()
        await task
        await monitor.close()
        return began

    began = asyncio.run(run())
    offsets = {name: offset for offset, name in monitor.schedule()}
    # A probe may start late (the loop was busy) but never before its slot: the n-th probe of a target
    # starts no earlier than n intervals plus its offset after the monitor started.
    early = [
        (name, n, round(started - began, 3))
        for name, times in starts.items()
        for n, started in enumerate(times)
        if started - began < n * 1.0 + offsets[name] - 0.005
    ]
    assert not early, early[:10]
    assert sum(len(times) for times in starts.values()) >= 2 * 201
    # and within a round the probes start in the order of their offsets
    first_starts = sorted(starts, key=lambda name: starts[name][0])
    assert first_starts == sorted(starts, key=lambda name: offsets[name])
    slow_state = next(s for s in monitor.states if s.info.name == "slow-1")
    assert slow_state.up is True, (slow_state.last_error, slow_state.failures)
    assert slow_state.last_duration is not None
    assert 0.3 <= slow_state.last_duration < 1.0
    assert all(s.up for s in monitor.states)


def test_the_loop_wakes_for_a_batch_of_due_probes_not_for_each(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """Each wake-up of the process costs CPU: the probes due within a window start together (late by
    at most that window, never early), so a round of 200 targets takes ~200/16 wake-ups, not 200."""
    backend = start_http_backend(stack, "fast")
    loaded = make_config([app_cluster("web", [(f"app-{i}", backend.url) for i in range(200)])], interval="1s")
    monitor = quiet_monitor(loaded)
    window = batch_window(1.0, 200)
    assert window == min(0.1, PROBES_PER_WAKEUP / 200)
    starts: list[tuple[float, str]] = []
    original = monitor._probe_and_record

    async def recording(target: Any) -> None:
        starts.append((asyncio.get_running_loop().time(), target.state.info.name))
        await original(target)

    monitor._probe_and_record = recording  # type: ignore[method-assign]

    async def run() -> float:
        stop = asyncio.Event()
        began = asyncio.get_running_loop().time()
        task = asyncio.create_task(monitor.run(stop))
        while monitor.rounds < 3:
            await asyncio.sleep(0.05)
            assert asyncio.get_running_loop().time() - began < 30, "three rounds did not complete"
        stop.set()
        await task
        await monitor.close()
        return began

    began = asyncio.run(run())
    offsets = {name: offset for offset, name in monitor.schedule()}
    first_round = sorted(starts)[:200]
    assert {name for _, name in first_round} == set(offsets)
    late = sorted(at - began - offsets[name] for at, name in first_round)
    assert late[0] >= -0.005  # never early
    assert late[len(late) // 2] <= window  # typically within the window (a loaded machine adds to it)
    # wake-ups: the scheduler's sleeps until the next batch is due (counted, not inferred from start
    # times, which a preempted process spreads out); a round without batching would sleep ~200 times
    assert monitor.scheduler_waits <= monitor.rounds * 2 * 200 / PROBES_PER_WAKEUP, monitor.scheduler_waits


def test_probes_in_flight_are_bounded_and_waiting_is_not_timed(
    stack: Stack, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    slow = start_http_backend(stack, "slow")
    slow.set_mode("slow", 0.2)
    urls = [(f"app-{i}", slow.url) for i in range(20)]
    monitor_settings = {"interval": "5s", "timeout": "900ms", "max_concurrency": 4}
    loaded = load_config(write_config({"monitor": monitor_settings, "clusters": [app_cluster("web", urls)]}))
    monitor = quiet_monitor(loaded)
    assert monitor.max_concurrency == 4
    in_flight, peak = 0, 0
    original = monitor._probe_and_record

    async def counting(target: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await original(target)
        finally:
            in_flight -= 1

    monitor._probe_and_record = counting  # type: ignore[method-assign]

    async def run() -> float:
        start = time.monotonic()
        await monitor.run_round()
        took = time.monotonic() - start
        await monitor.close()
        return took

    took = asyncio.run(run())
    assert peak == 4
    # 20 probes of 0.2 s, 4 at a time, take at least 5 x 0.2 s; none timed out waiting for its turn
    assert took >= 1.0
    assert all(s.up for s in monitor.states), [
        (s.info.name, s.last_error) for s in monitor.states if not s.up
    ]
    assert all(s.last_duration is not None and 0.2 <= s.last_duration < 0.9 for s in monitor.states)


def test_default_max_concurrency(make_config: Callable[..., LoadedConfig]) -> None:
    loaded = make_config([app_cluster("web", [("app-1", "http://127.0.0.1:9/")])])
    assert loaded.config.monitor.max_concurrency == 256


def test_status_is_unknown_until_probed_then_up_or_down(make_config: Callable[..., LoadedConfig]) -> None:
    loaded = make_config([app_cluster("web", [("app-1", "http://127.0.0.1:9/")])])
    state = quiet_monitor(loaded).states[0]
    assert state.status == "unknown"
    state.up = True
    assert state.status == "up"
    state.up = False
    assert state.status == "down"


def test_event_log_from_settings() -> None:
    log = EventLog.from_settings(LogSettings(format="json", level="warning"))
    assert log.fmt == "json"
    assert log.min_level == 30
