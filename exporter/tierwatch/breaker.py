"""Per-target circuit breaker: closed, open, half-open."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout`` seconds one
    half-open trial decides: success closes it, failure opens it for another ``reset_timeout``."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self._opened_at = 0.0

    def allow(self) -> bool:
        """May the target be contacted now? Moves open to half_open once the reset timeout passed."""
        if self.state == "open":
            if self._clock() - self._opened_at < self.reset_timeout:
                return False
            self.state = "half_open"
        return True

    def record_success(self) -> None:
        """A probe succeeded: close the circuit."""
        self.consecutive_failures = 0
        self.state = "closed"

    def record_failure(self) -> None:
        """A probe failed: count it, and open the circuit at the threshold or after a failed trial."""
        self.consecutive_failures += 1
        if self.state == "half_open" or self.consecutive_failures >= self.failure_threshold:
            self.state = "open"
            self._opened_at = self._clock()

    def seconds_until_trial(self) -> float:
        """How long until an open circuit lets a trial probe through (0 if not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.reset_timeout - (self._clock() - self._opened_at))
