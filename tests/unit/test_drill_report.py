"""A drill's HTML report (lab/tierwatch_lab/drill_report.py): self-contained, escaped, the writes counted
per 100 ms, the markers and the primaries lane; then drawn by headless Chromium where they belong."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from browser import count_colour
from report_pixels import check_markers, check_writes, page_x, report_screenshot, rgb

from tierwatch_lab import drill_kit
from tierwatch_lab.drill_checker import PROBE_GAP, accepting_over_time
from tierwatch_lab.drill_kit import DrillResult, PrimarySampler, per_bin, sample_runs
from tierwatch_lab.drill_report import (
    ACTION_DONE,
    ACTION_STARTED,
    ALERT,
    DETECTED,
    FAILURE,
    LANE_COLOURS,
    REJOINED,
    WRITES_BACK,
    layout,
    marker_kind,
    report_html,
)
from tierwatch_lab.drills_traffic import TrafficDrillResult

T0 = 1_800_000_000.0  # the failure
GAP = (T0 + 0.005, T0 + 5.805)  # the last write before the failure, the first after it


def drill_result() -> DrillResult:
    """A Redis master drill as the drill records it: writes every 20 ms (none between the failure and
    +5.8 s), the chain's timeline, the primaries sampled every 250 ms (two of them for a second)."""
    result = DrillResult("redis-master", T0)
    before = [T0 - 3.0 + 0.005 + 0.02 * i for i in range(151)]  # up to GAP[0]
    after = [GAP[1] + 0.02 * i for i in range(300)]
    result.writes["redis"] = before + after
    result.primaries_seen["redis"] = [(T0 - 3 + 0.25 * i, _primaries(-3 + 0.25 * i)) for i in range(64)]
    for at, what in (
        (0.0, "failure: killed Redis master redis-a"),
        (0.28, "detected: exporter saw redis-a down (error)"),
        (5.0, "alert: RedisMasterDown delivered to the recovery service"),
        (5.0, "action: redis_failover started for redis-a"),
        (5.4, "action: redis_failover succeeded — redis-b is the master, 3 replica(s) follow it"),
        (5.805, "recovered: writes acknowledged again"),
        (6.1, "dns: _redis._tcp.cache-main now 127.0.0.1:6380 (0.02s, read back)"),
        (10.0, "rejoined: redis-a is a replica of redis-b"),
    ):
        result.add(T0 + at, what)
    result.acked, result.lost, result.primaries, result.recovered = 451, 0, {"redis": 1}, True
    return result


def _primaries(seconds: float) -> int:
    if seconds < 0:
        return 1
    if seconds < 5.25:
        return 0
    return 2 if 8.0 <= seconds < 9.0 else 1


def test_the_page_is_one_svg_with_nothing_to_fetch() -> None:
    page = report_html(drill_result())
    assert page.count("<svg") == 1 and page.count("</svg>") == 1
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    for fetching in ("<script", "<link", "<img", "<iframe", "url(", "@import"):
        assert fetching not in page.lower()


def test_hostile_text_is_escaped() -> None:
    result = drill_result()
    result.add(T0 + 1, 'failure: <script>alert("x")</script> & more')
    result.detail = '"><img src=x onerror=alert(1)>'
    result.faults = {"<b>key</b>": {"value": "</td></table><h1>owned</h1>"}}
    result.writes["<svg onload=alert(1)>"] = [T0, T0 + 1]
    page = report_html(result)
    for raw in ("<script>", "<img", "<b>key", "</td></table><h1>", "<svg onload"):
        assert raw not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<svg") == 1


def test_writes_are_counted_per_100ms() -> None:
    result = drill_result()
    first, counts = per_bin(result.writes["redis"], T0)
    assert first == -30  # the first write at -2.995 s
    assert counts[:30] == [5] * 30  # every 20 ms: five per 100 ms
    assert counts[30] == 1  # the write at +0.005 s, then none until +5.805 s
    assert counts[31:88] == [0] * 57
    assert counts[88:-1] == [5] * (len(counts) - 89) and sum(counts) == 451
    data = result.as_dict()
    assert data["writes_per_100ms"]["redis"] == {"first_s": -3.0, "counts": counts}
    assert {"scenario", "recovered", "acked", "lost", "primaries", "detail", "timeline"} <= set(data)
    assert "longest stretch without one 5.80 s" in report_html(result)


def test_the_lane_shows_two_primaries_when_the_samples_do() -> None:
    result = drill_result()
    runs = sample_runs(result.primaries_seen["redis"])
    assert [n for _, _, n in runs] == [1, 0, 1, 2, 1]
    assert runs[3][:2] == (T0 + 8.0, T0 + 9.0)
    assert result.as_dict()["primaries_seen"]["redis"][3] == [8.0, 9.0, 2]
    page = report_html(result)
    (two,) = re.findall(r'<rect class="servers-2"[^>]*><title>([^<]*)</title>', page)
    assert two == "redis: 2 server(s) report the primary role, +8.00 s to +9.00 s"
    result.primaries_seen = {}
    assert "servers-" not in report_html(result)  # no samples, no lane


def test_labels_keep_inside_the_chart_and_off_each_other() -> None:
    """Two markers at one time get a label row each; one at the right edge has its label left of it."""
    result = drill_result()
    result.add(result.writes["redis"][-1] + 0.3, "rejoined: redis-c is a replica of redis-b")
    plot = layout(result)
    same = [m for m in plot.markers if m.at == T0 + 5.0]
    assert len(same) == 2 and same[0].row != same[1].row
    last = max(plot.markers, key=lambda m: m.at)
    assert last.label_left and not any(m.label_left for m in plot.markers if m is not last)


def test_a_drill_without_writers_has_markers_and_its_own_figures() -> None:
    result = TrafficDrillResult("slow-app", T0, fired={"AppTraffic5xxRatioHigh": T0 + 12.5})
    result.add(T0, "failure: es-1 delays real requests 1000 ms and fails 50% of them")
    result.add(T0 + 12.5, "alert: AppTraffic5xxRatioHigh firing (cluster=web)")
    page = report_html(result)
    assert "no writer ran in this drill" in page and "acked writes / 100 ms" not in page
    assert page.count('class="marker ') == 2
    assert "<th>fired.AppTraffic5xxRatioHigh</th><td>12.5</td>" in page


def test_a_sampling_break_ends_a_run() -> None:
    samples = [(0.0, 1), (0.25, 1), (0.5, 0), (0.75, 0), (10.0, 0), (10.25, 1)]
    assert sample_runs(samples) == [(0.0, 0.5, 1), (0.5, 0.75, 0), (10.0, 10.25, 0), (10.25, 10.25, 1)]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("failure: killed Redis master redis-a", FAILURE),
        ("detected: exporter (vantage failover) saw pg-1 down", DETECTED),
        ("alert: RedisMasterDown delivered to the recovery service", ALERT),
        ("action: pg_failover started for pg-1", ACTION_STARTED),
        ("action: redis_failover succeeded — restarted nothing, redis-b started as master", ACTION_DONE),
        ("recovered by name: writes acknowledged again", WRITES_BACK),
        ("writes committed again through the write LB", WRITES_BACK),
        ("postgres: recovered by name: writes acknowledged again (DNS)", WRITES_BACK),
        ("[quorum loss] recovered: writes acknowledged again", WRITES_BACK),
        ("rejoined: pg-1 streams from pg-2", REJOINED),
        ("healed: redis-a is back", None),
        ("watcher-1 sees both primaries up again", None),
        ("dns: main-db now 127.0.0.1:5433", None),
    ],
)
def test_marker_kinds_come_from_the_line(text: str, kind: object) -> None:
    assert marker_kind(text) == kind


def test_accepting_servers_over_time_from_the_probers() -> None:
    """Two servers acknowledging probe writes for a second (the double-primary time) count 2."""
    one = SimpleNamespace(acked_at=[100 + i * PROBE_GAP for i in range(30)])
    two = SimpleNamespace(acked_at=[101 + i * PROBE_GAP for i in range(10)])
    samples = accepting_over_time([one, two])  # type: ignore[list-item]
    assert samples[0] == (100.0, 1) and samples[-1][0] == pytest.approx(102.9)

    def at(t: float) -> int:
        return next(n for when, n in samples if abs(when - t) < PROBE_GAP / 2)

    assert (at(100.5), at(101.5), at(102.9)) == (1, 2, 1)


class _Role:
    """A server's role as the sampler asks it (``slow``: answered after 1.5 s, as by a paused server)."""

    def __init__(self, server: SimpleNamespace):
        self.server = server

    def __call__(self) -> bool:
        if self.server.slow.is_set():
            time.sleep(1.5)
        return bool(self.server.role == "master")

    def close(self) -> None:
        self.server.closed = True


def test_the_sampler_counts_primaries_and_a_slow_answer_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drill_kit, "_RedisRole", _Role)
    cleanups: list[Any] = []
    servers = {
        n: SimpleNamespace(role=r, slow=threading.Event(), closed=False)
        for n, r in (("a", "master"), ("b", "slave"))
    }
    demo = SimpleNamespace(redis=servers, pg={}, stack=SimpleNamespace(on_close=cleanups.append))
    sampler = PrimarySampler(demo, ("redis",), every=0.05)  # type: ignore[arg-type]
    try:
        time.sleep(0.4)
        paused = time.time()
        servers["a"].slow.set()
        servers["b"].role = "master"
        time.sleep(1.9)
    finally:
        samples = sampler.stop()["redis"]
    cleanups[0]()  # the stack's close stops it again: nothing left to stop
    before = [n for at, n in samples if at < paused - 0.1]
    during = [n for at, n in samples if paused + 0.1 < at < paused + 1.4]
    assert before and before[-1] == 1
    # b is master now; a, slow to answer, counts as none from the start of its look (else: 2)
    assert during and set(during) == {1}
    assert 2 in [n for at, n in samples if at > paused + 1.4]  # a answered "master" at last
    assert all(server.closed for server in servers.values())


def test_the_screenshot_draws_the_writes_the_gap_and_each_marker(tmp_path: Path) -> None:
    result = drill_result()
    chart, plot = report_screenshot(result, tmp_path)
    gap = check_writes(chart, plot, result, "redis")
    assert gap == pytest.approx(5.8)
    kinds = check_markers(chart, plot)
    assert kinds == {
        "failure": 1,
        "detected": 1,
        "alert": 1,
        "action-started": 1,
        "action-done": 1,
        "writes-back": 1,
        "rejoined": 1,
    }
    lane = plot.lane_top(0)
    two = (page_x(plot, T0 + 8.0) + 2, lane + 2, page_x(plot, T0 + 9.0) - 2, lane + 18)
    assert count_colour(chart, rgb(LANE_COLOURS[2]), box=two) > 0.8 * (two[2] - two[0]) * 16
    assert count_colour(chart, rgb(LANE_COLOURS[2])) < 1.2 * (two[2] - two[0]) * 20  # nowhere else
