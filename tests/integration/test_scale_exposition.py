"""/metrics at scale: a scrape joins one column of lines per family in C and does no Python work per
target, and stays byte for byte the collector's rendering while targets come and go and their families
change; a probe's recorded latency is the target's, not the time the event loop was busy elsewhere."""

from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tierwatch.clients.http import HttpClient, HttpRules, ssl_context
from tierwatch.config import LoadedConfig
from tierwatch.events import EventLog
from tierwatch.metric_catalog import QUEUE_LENGTH
from tierwatch.metrics import ReadyExposition, TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.probes.base import Sample
from tierwatch.probes.http import HTTP_STATUS
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend

ACCEPTS = ("", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")


def reference(monitor: Monitor, accept: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    encoder, _ = choose_encoder(accept)
    return encoder(registry)


def web(targets: int, prefix: str = "w") -> dict[str, Any]:
    return {
        "name": "web",
        "tier": "app",
        "targets": [
            {"name": f"{prefix}-{i}", "region": "primary", "url": f"http://127.0.0.1:9/?t={i}"}
            for i in range(targets)
        ],
    }


def probed(monitor: Monitor, exposition: ReadyExposition, round_: int) -> None:
    """What a round of probes does to every target's state: new values, the same families."""
    for state in monitor.states:
        state.up = True
        state.last_probe = 1764571928.5 + round_
        state.observe_duration(0.001 + round_ / 1000)
        state.samples = [Sample(HTTP_STATUS, (), 200.0)]
        exposition.refresh(state)
    monitor.version += 1


def python_lines_of_a_scrape(exposition: ReadyExposition) -> int:
    """Python line events while a scrape's body is joined (any Python loop over targets shows)."""
    events = 0

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., Any]:
        nonlocal events
        if event == "line":
            events += 1
        return trace

    encoder = choose_encoder("")
    sys.settrace(trace)
    try:
        exposition.body(*encoder)
    finally:
        sys.settrace(None)
    return events


def test_a_scrape_does_no_python_work_per_target(make_config: Callable[..., LoadedConfig]) -> None:
    counts = {}
    for targets in (10, 1000):
        monitor = Monitor(make_config([web(targets)]), EventLog(stream=io.StringIO()))
        exposition = ReadyExposition(monitor)
        for round_ in range(2):  # the first scrape lays the columns out; the second is a steady one
            probed(monitor, exposition, round_)
            lines = python_lines_of_a_scrape(exposition)
        counts[targets] = lines
        assert exposition.body(*choose_encoder("")) == reference(monitor, "")
    assert counts[1000] == counts[10], counts


def test_body_stays_the_collector_rendering_as_targets_and_their_families_come_and_go(
    make_config: Callable[..., LoadedConfig],
) -> None:
    clusters = [
        web(4),
        {"name": "cache", "tier": "redis", "targets": [
            {"name": "r-1", "region": "primary", "url": "redis://127.0.0.1:9"},
            {"name": "r-2", "region": "failover", "url": "redis://127.0.0.1:9"}]},
    ]  # fmt: skip
    monitor = Monitor(make_config(clusters), EventLog(stream=io.StringIO()))
    exposition = ReadyExposition(monitor)
    encoders = [choose_encoder(accept) for accept in ACCEPTS]

    def check() -> None:
        monitor.version += 1
        assert [exposition.body(*pair) for pair in encoders] == [reference(monitor, a) for a in ACCEPTS]

    check()
    probed(monitor, exposition, 1)
    check()
    states = {s.info.name: s for s in monitor.states}
    # a target that goes down loses its HTTP family; a later one shows a family first
    states["w-0"].up, states["w-0"].samples = False, []
    exposition.refresh(states["w-0"])
    check()
    states["r-2"].samples = [Sample(QUEUE_LENGTH, ("jobs", "waiting"), 3.0), Sample(HTTP_STATUS, (), 1.0)]
    exposition.refresh(states["r-2"])
    check()
    states["r-2"].samples = [Sample(HTTP_STATUS, (), 1.0), Sample(QUEUE_LENGTH, ("jobs", "waiting"), 4.0)]
    exposition.refresh(states["r-2"])
    check()
    states["w-0"].up, states["w-0"].samples = True, [Sample(HTTP_STATUS, (), 503.0)]
    exposition.refresh(states["w-0"])
    check()
    # a reload: targets removed, added and kept (their lines move to new places)
    clusters[0] = {**web(2), "targets": [*web(6, "n")["targets"], *web(2)["targets"]]}
    asyncio.run(monitor.apply(make_config(clusters)))
    check()
    probed(monitor, exposition, 2)
    check()
    assert b'tierwatch_up{cluster="web",region="primary",target="n-5",tier="app"} 1.0' in exposition.body(
        *encoders[0]
    )
    assert b'target="w-3"' not in exposition.body(*encoders[0])
    assert b'tierwatch_targets{state="up",tier="app"} 8.0' in exposition.body(*encoders[0])


BLOCK = 0.2  # the event loop is busy this long while a fast target answers


def test_a_busy_loop_does_not_inflate_a_recorded_http_latency(stack: Stack) -> None:
    """The answer arrives while the loop is blocked; its latency is taken from when it arrived (the
    kernel's receive timestamp), not from when the loop got round to reading it."""
    backend = start_http_backend(stack, "fast")
    rules = HttpRules()

    async def run() -> tuple[float, float]:
        client = HttpClient(2.0, ssl_context(None, True))
        try:
            await client.get(backend.url, rules)  # connected and kept alive
            began = time.perf_counter()
            task = asyncio.create_task(client.get(backend.url, rules))
            await asyncio.sleep(0)  # the request is written; the task waits for its answer
            time.sleep(BLOCK)  # the loop is busy: the answer arrives meanwhile, nobody reads it
            answer = await task
            return answer.elapsed, time.perf_counter() - began
        finally:
            await client.close()

    elapsed, waited = asyncio.run(run())
    assert waited >= BLOCK
    assert elapsed < BLOCK / 2, elapsed


def test_a_busy_loop_does_not_inflate_a_probe_s_recorded_duration(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    backend = start_http_backend(stack, "fast")
    loaded = make_config(
        [{"name": "web", "tier": "app", "targets": [{"name": "w", "region": "p", "url": backend.url}]}],
        timeout="900ms",
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))

    async def run() -> None:
        await monitor.run_round()  # connected and kept alive
        task = asyncio.create_task(monitor.run_round())
        for _ in range(3):  # the probe has written its request and waits for the answer
            await asyncio.sleep(0)
        time.sleep(BLOCK)
        await task
        await monitor.close()

    asyncio.run(run())
    state = monitor.states[0]
    assert state.up is True, state.last_error
    assert state.duration_count == 2
    assert state.last_duration is not None and state.last_duration < BLOCK / 2, state.last_duration
