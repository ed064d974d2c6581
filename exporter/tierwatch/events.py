"""Structured event log: one line per state change of a target, as text or JSON lines on stdout."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol, TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class LogSettings(Protocol):
    """What a config's ``log`` section gives: ``format`` (text, json) and ``level``."""

    @property
    def format(self) -> str: ...

    @property
    def level(self) -> str: ...


class EventLog:
    """Writes events such as ``target_down`` or ``circuit_open`` with their fields.

    Fields must never carry a secret: callers pass names, states and failure reasons only.
    """

    def __init__(self, fmt: str = "text", level: str = "info", stream: TextIO | None = None):
        self.fmt = fmt
        self.min_level = LEVELS[level]
        self.stream = stream or sys.stdout

    @classmethod
    def from_settings(cls, settings: LogSettings) -> EventLog:
        """The event log a config's ``log`` section asks for, on stdout: every service's default."""
        return cls(settings.format, settings.level)

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        """Write one event with its fields (skipped when below the configured level)."""
        if LEVELS[level] < self.min_level:
            return
        now = time.time()
        if self.fmt == "json":
            record = {"ts": round(now, 3), "level": level, "event": event, **fields}
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
            rest = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
            line = f"{stamp} {level.upper():5} {event} {rest}".rstrip()
        self.stream.write(line + "\n")
        self.stream.flush()


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "=" in text or not text) else text
