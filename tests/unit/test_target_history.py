"""A target's history (target_history.py): fixed-size rings of state changes and probe durations, their
memory at 10,000 targets, and a probe's write that allocates nothing."""

from __future__ import annotations

import math
import tracemalloc

from tierwatch import target_history
from tierwatch.breaker import CircuitBreaker
from tierwatch.config import ClusterConfig, TargetConfig
from tierwatch.monitor import TargetState
from tierwatch.probes.base import TargetInfo
from tierwatch.target_history import CHANGES_KEPT, DETAIL_CHARS, PROBES_KEPT, Change, TargetHistory

TARGETS = 10_000
BYTES_PER_TARGET_LIMIT = 2048


def test_a_thousand_flaps_keep_exactly_the_last_changes() -> None:
    history = TargetHistory()
    history.change("status", "unknown", "up", 1000.0)
    for flap in range(1000):
        history.change("status", "up", "down", 2000.0 + 2 * flap, f"refused: flap {flap}")
        history.change("status", "down", "up", 2001.0 + 2 * flap)
    changes = history.changes()
    assert len(changes) == CHANGES_KEPT
    assert history.total_changes == 2001
    # newest first, alternating, with the down changes' error texts
    assert changes[0] == Change(3999.0, "status", "down", "up", None)
    assert changes[1] == Change(3998.0, "status", "up", "down", "refused: flap 999")
    assert [c.when for c in changes] == [3999.0 - i for i in range(CHANGES_KEPT)]
    assert history.last_change_at() == 3999.0


def test_a_first_observation_is_not_a_recent_change() -> None:
    history = TargetHistory()
    assert history.changes() == [] and history.last_change_at() is None
    history.change("status", "unknown", "up", 1000.0)
    assert history.last_change_at() is None
    history.change("circuit", "closed", "open", 1005.0)
    history.change("role", "replica", "primary", 1010.0)
    assert history.last_change_at() == 1010.0
    assert [c.kind for c in history.changes()] == ["role", "circuit", "status"]


def test_error_text_is_cut_and_kept_by_reference() -> None:
    history = TargetHistory()
    long = "timeout: " + "x" * 1000
    short = "refused: connection refused"
    history.change("status", "up", "down", 1.0, long)
    history.change("status", "down", "up", 2.0)
    history.change("status", "up", "down", 3.0, short)
    newest, _, oldest = history.changes()
    assert newest.detail is short  # no copy
    assert oldest.detail == long[:DETAIL_CHARS]


def test_the_probe_ring_keeps_the_last_durations_and_marks_failures() -> None:
    history = TargetHistory()
    assert history.probes() == []
    history.probe(0.0, False)  # an instant failure is still a failure
    history.probe(0.5, True)
    assert [(m.seconds, m.ok) for m in history.probes()] == [(0.0, False), (0.5, True)]
    for i in range(1000):
        history.probe(i / 1000, i % 10 != 0)
    marks = history.probes()
    assert len(marks) == PROBES_KEPT
    expected = [(i / 1000, i % 10 != 0) for i in range(1000 - PROBES_KEPT, 1000)]
    assert [m.ok for m in marks] == [ok for _, ok in expected]
    assert all(math.isclose(m.seconds, s, rel_tol=1e-6) for m, (s, _) in zip(marks, expected, strict=True))
    history.probe(float("inf"), True)  # stored as float32: kept, the sparkline clamps it
    assert history.probes()[-1].seconds == math.inf


def _states(count: int) -> list[TargetState]:
    target = TargetConfig(name="t0", region="primary", url="http://127.0.0.1:1/health")
    cluster = ClusterConfig(name="web", tier="app", targets=[target])
    info = TargetInfo("app", cluster, target, None, 1.0)
    return [TargetState(info, CircuitBreaker()) for _ in range(count)]


def _fill(state: TargetState, index: int, detail_chars: int) -> None:
    """Every slot used, each down change with its own error text (a probe makes a new one each time)."""
    for probe in range(PROBES_KEPT):
        state.observe_duration(0.002 + probe * 1e-5, ok=probe % 5 != 0)
    for change in range(CHANGES_KEPT):
        if change % 2 == 0:
            text = f"refused: connection refused #{index}.{change} ".ljust(detail_chars, "x")
            state.history.change("status", "up", "down", 1.7e9 + change, text)
        else:
            state.history.change("status", "down", "up", 1.7e9 + change)


def _history_bytes(detail_chars: int) -> float:
    states = _states(TARGETS)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index, state in enumerate(states):
            state.history = TargetHistory()
            _fill(state, index, detail_chars)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / TARGETS


def test_history_bytes_per_target_at_ten_thousand_targets() -> None:
    """What the history adds to each TargetState, every slot full (measured, printed with -s)."""
    typical = _history_bytes(40)  # "refused: connection refused", "timeout: no complete answer within 2s"
    worst = _history_bytes(DETAIL_CHARS)  # every kept error text at the cut
    print(f"history per target: {typical:.0f} bytes (40-char errors), {worst:.0f} bytes (at the cut)")
    assert typical < worst < BYTES_PER_TARGET_LIMIT


def test_a_probe_write_allocates_nothing() -> None:
    history = TargetHistory()
    for _ in range(PROBES_KEPT):
        history.probe(0.001, True)
    durations = [0.001 * i for i in range(100)]  # made before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(100):
            for seconds in durations:
                history.probe(seconds, True)
                history.probe(seconds, False)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # 20,000 writes keep nothing: a string or a list entry per write would be hundreds of KB. Only what
    # target_history.py allocated counts (a pytest-xdist worker has other threads allocating meanwhile).
    mine = [tracemalloc.Filter(True, target_history.__file__)]
    kept = after.filter_traces(mine).compare_to(before.filter_traces(mine), "filename")
    assert sum(stat.size_diff for stat in kept) < 100
