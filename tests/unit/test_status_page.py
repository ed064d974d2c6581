"""The status page's history (status_page.py): the sparkline stays inside its box whatever the
durations, hostile names and error texts are escaped, the overview shows history for a bounded set of
targets at 10,000 targets, and /target answers 200, 404 (escaped) or 400."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Callable
from typing import Any

from tierwatch.config import LoadedConfig, TargetConfig
from tierwatch.events import EventLog
from tierwatch.monitor import Monitor
from tierwatch.probes.base import TargetInfo
from tierwatch.server import ExporterApp
from tierwatch.status_page import (
    INLINE_MAX,
    RECENT_SECONDS,
    noteworthy,
    render_status_page,
    render_target_page,
    sparkline,
)
from tierwatch.target_history import PROBES_KEPT, ProbeMark

HOSTILE = '<script>alert("x")</script>&"\'<img src=x onerror=alert(1)>'


def monitor_of(make_config: Callable[..., LoadedConfig], count: int) -> Monitor:
    targets = [
        {"name": f"t{i}", "region": "primary", "url": f"http://127.0.0.1:1/h?{i}"} for i in range(count)
    ]
    loaded = make_config([{"name": "web", "tier": "app", "targets": targets}], interval="5s", timeout="2s")
    return Monitor(loaded, EventLog(stream=io.StringIO()))


def _numbers(svg: str) -> tuple[list[tuple[float, float]], list[float]]:
    points = [
        (float(x), float(y))
        for run in re.findall(r'points="([^"]*)"', svg)
        for x, y in (pair.split(",") for pair in run.split())
    ]
    points += [(float(x), float(y)) for x, y in re.findall(r'cx="([^"]*)" cy="([^"]*)"', svg)]
    ticks = [float(x) for x in re.findall(r"M([-\d.]+) 0V", svg)]
    return points, ticks


def test_the_sparkline_stays_in_its_box_and_draws_failures_apart() -> None:
    wild = [0.0, 1e-9, 3.0, 1e9, float("inf"), 0.002, 0.004]
    marks = [ProbeMark(wild[i % len(wild)], i % 9 != 4) for i in range(PROBES_KEPT)]
    svg = sparkline(marks, 120, 22)
    points, ticks = _numbers(svg)
    assert len(points) == sum(1 for m in marks if m.ok)
    assert len(ticks) == sum(1 for m in marks if not m.ok)
    for x, y in points:
        assert 0 <= x <= 120 and 0 <= y <= 22, (x, y)
    assert all(0 <= x <= 120 for x in ticks)
    # the newest probe is at the right edge, a young target's line starts further right
    young, _ = _numbers(sparkline(marks[:3], 120, 22))
    assert max(x for x, _ in young) == 120 and min(x for x, _ in young) > 100
    assert sparkline([], 120, 22) == ""
    flat, _ = _numbers(sparkline([ProbeMark(0.0, True)] * 5, 120, 22))  # all zero: no division by zero
    assert {y for _, y in flat} == {20.0}


def test_hostile_names_and_error_texts_are_escaped(make_config: Callable[..., LoadedConfig]) -> None:
    monitor = monitor_of(make_config, 2)
    state = monitor.states[0]
    target = TargetConfig.model_construct(name=HOSTILE, region=HOSTILE, url="http://127.0.0.1:1/")
    state.info = TargetInfo(HOSTILE, state.info.cluster, target, None, 2.0)
    state.up, state.last_error, state.role = False, HOSTILE, HOSTILE
    now = time.time()
    state.history.change("status", "up", "down", now - 5, HOSTILE)
    state.history.change("role", HOSTILE, "primary", now - 4)
    state.history.probe(0.01, False)
    for page in (render_status_page(monitor), render_target_page(monitor, state)):
        assert "<script" not in page and "<img" not in page and 'alert("x")' not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    overview = render_status_page(monitor)
    assert 'href="/target?name=%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E%26%22%27' in overview
    assert 'class="history"' in overview  # down: its history is inline


def test_the_overview_shows_history_for_a_bounded_set_of_targets(
    make_config: Callable[..., LoadedConfig],
) -> None:
    monitor = monitor_of(make_config, 3 * INLINE_MAX)
    now = time.time()
    states = monitor.states
    for state in states:
        state.up = True
        state.history.change("status", "unknown", "up", now - 7200)  # a first observation only
        state.history.probe(0.002, True)
    old = states[0]
    old.history.change("status", "up", "down", now - RECENT_SECONDS - 60, "refused")
    old.history.change("status", "down", "up", now - RECENT_SECONDS - 50)
    flapped = states[1 : 2 * INLINE_MAX + 1]  # more than can be shown: the most recent win
    for i, state in enumerate(flapped):
        state.history.change("status", "up", "down", now - 600 + i, "refused")
        state.history.change("status", "down", "up", now - 500 + i)
    still_down = states[-1]
    still_down.up = False
    still_down.history.change("status", "up", "down", now - 3000, "timeout")
    chosen = noteworthy(states, now)
    assert len(chosen) == INLINE_MAX
    assert chosen[0] is flapped[-1] and old not in chosen and still_down not in chosen
    assert set(map(id, chosen)) == {id(s) for s in flapped[-INLINE_MAX:]}
    page = render_status_page(monitor)
    assert page.count('class="history"') == INLINE_MAX
    assert page.count("<svg") == INLINE_MAX  # over INLINE_MAX targets: sparklines only with the history
    small = monitor_of(make_config, 3)
    for state in small.states:
        state.history.probe(0.002, True)
    assert render_status_page(small).count("<svg") == 3  # few targets: every row has its sparkline


def test_ten_thousand_targets_render_a_bounded_page(make_config: Callable[..., LoadedConfig]) -> None:
    monitor = monitor_of(make_config, 10_000)
    now = time.time()
    for i, state in enumerate(monitor.states):
        state.up, state.last_probe, state.last_duration = i % 10 != 0, now, 0.002
        state.history.change("status", "unknown", "up", now - 3600)
        if i % 10 == 0:  # a tenth went down: 1,000 candidates for INLINE_MAX places
            state.history.change("status", "up", "down", now - 100 + i / 1000, "refused: connection refused")
        for _ in range(PROBES_KEPT):
            state.observe_duration(0.002, ok=i % 10 != 0)
    started = time.process_time()
    page = render_status_page(monitor)
    took = time.process_time() - started
    print(f"10,000 targets: {len(page)} bytes in {took * 1000:.0f} CPU-ms")
    assert page.count('class="history"') == INLINE_MAX
    assert len(page) < 400 * 10_000  # rows stay about as large as before the history
    assert took < 5.0  # a bound against a quadratic render, not a benchmark


def call(app: ExporterApp, path: str, query: bytes = b"", method: str = "GET") -> tuple[int, str]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()


def test_the_target_page_route(make_config: Callable[..., LoadedConfig]) -> None:
    monitor = monitor_of(make_config, 2)
    monitor.states[1].history.change("status", "unknown", "down", time.time(), "refused: connection refused")
    app = ExporterApp(monitor)
    status, body = call(app, "/target", b"name=t1")
    assert status == 200 and "<h1>t1 " in body and "refused: connection refused" in body
    status, body = call(app, "/target", b"name=%3Cscript%3Et1")
    assert status == 404 and "&lt;script&gt;t1" in body and "<script" not in body
    assert call(app, "/target", b"")[0] == 400
    assert call(app, "/target", b"name=t1", method="HEAD") == (200, "")
