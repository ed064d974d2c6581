"""Durations in Prometheus style, and the circuit breaker's state machine."""

from __future__ import annotations

import pytest

from tierwatch.breaker import CircuitBreaker
from tierwatch.durations import format_duration, parse_duration, parse_duration_or_zero


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), ("1m30s", 90.0), ("2h", 7200.0), (3, 3.0), ("2.5", 2.5)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 s", "abc", "5x", "-1s", 0, True, None, "1s5"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), float("-inf"), "nan", "NaN", "inf", "-inf", "Infinity", "1e999"]
)
def test_parse_duration_rejects_non_finite(bad: object) -> None:
    with pytest.raises(ValueError, match="expected a finite duration"):
        parse_duration(bad)
    with pytest.raises(ValueError, match="expected a finite duration"):
        parse_duration_or_zero(bad)


def test_parse_duration_bounds() -> None:
    assert parse_duration("365d") == 365 * 86400.0
    for too_long in ("366d", "53w", 1e300, "99999999999999999999w"):
        with pytest.raises(ValueError, match="at most 365d"):
            parse_duration(too_long)


def test_zero_is_off_but_false_is_not_a_duration() -> None:
    assert [parse_duration_or_zero(v) for v in (0, "0", "0s", "0ms")] == [0.0] * 4
    with pytest.raises(ValueError, match="duration"):
        parse_duration_or_zero(False)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.5, 5, 60, 90, 1.5)] == ["500ms", "5s", "1m", "90s", "1500ms"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_and_half_opens_after_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(5, 30.0, clock)
    for _ in range(4):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_failed_trial_reopens_for_a_full_reset_timeout() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow() and breaker.state == "half_open"
    breaker.record_failure()
    assert breaker.state == "open"
    clock.now += 9.9
    assert not breaker.allow()
    assert breaker.seconds_until_trial() == pytest.approx(0.1)


def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state == "closed"
