"""Prometheus-style durations (``500ms``, ``5s``, ``1m30s``) or plain seconds."""

from __future__ import annotations

import math
import re

MAX_DURATION = 365 * 86400.0  # a year: beyond it a timer is a mistake (and overflows some event loops)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_or_zero(value: object) -> float:
    """Like parse_duration, but ``0`` / ``0s`` (off) is allowed."""
    if not isinstance(value, bool) and value in (0, "0", "0s", "0ms"):
        return 0.0
    return parse_duration(value)


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; accepts numbers and strings like ``500ms``, ``5s``, ``1m30s``.

    Refuses anything not finite, not above zero, or above a year."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 1m or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError("expected a duration such as 500ms, 5s, 1m or a number of seconds") from None
    else:
        raise ValueError("expected a duration such as 500ms, 5s, 1m or a number of seconds")
    if not math.isfinite(seconds):  # nan, inf and overflows such as 1e999
        raise ValueError("expected a finite duration")
    if seconds <= 0:
        raise ValueError("expected a duration greater than zero")
    if seconds > MAX_DURATION:
        raise ValueError("expected a duration of at most 365d")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the way Prometheus writes durations (``5s``, ``500ms``, ``1m``)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
