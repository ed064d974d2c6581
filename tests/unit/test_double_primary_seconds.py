"""The drills' double-primary time (drill_checker.double_primary_seconds) on made-up acknowledgement
times: the same answers as counting every acknowledgement at every step, which it did before it used
bisection."""

from __future__ import annotations

import random

from tierwatch_lab.drill_checker import PROBE_WINDOW, Prober, double_primary_seconds


def prober(name: str, times: list[float]) -> Prober:
    found = Prober(name, lambda n: True)
    found.acked_at = list(times)
    return found


def counted(probers: list[Prober], start: float, end: float) -> float:
    step, total, t = 0.05, 0.0, start
    while t < end:
        if sum(1 for p in probers if any(t - PROBE_WINDOW <= a <= t for a in p.acked_at)) >= 2:
            total += step
        t += step
    return round(total, 2)


def test_no_overlap_is_zero_and_an_overlap_is_its_length() -> None:
    a = prober("a", [i * 0.1 for i in range(100)])  # 0 to 9.9 s
    b = prober("b", [10.5 + i * 0.1 for i in range(95)])  # 10.5 to 19.9 s: after a's window
    assert double_primary_seconds([a, b], 0, 20) == 0.0
    c = prober("c", [5 + i * 0.1 for i in range(20)])  # 5 to 6.9 s, beside a
    overlap = double_primary_seconds([a, b, c], 0, 20)
    assert overlap == counted([a, b, c], 0, 20)
    assert 1.9 <= overlap <= 2.0 + PROBE_WINDOW


def test_random_acknowledgements_give_the_counted_answer() -> None:
    rng = random.Random(7)
    for _ in range(20):
        probers = [
            prober(str(i), sorted(rng.uniform(0, 30) for _ in range(rng.randint(0, 80)))) for i in range(4)
        ]
        assert double_primary_seconds(probers, 0, 30) == counted(probers, 0, 30)
