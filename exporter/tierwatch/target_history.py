"""A target's recent past in fixed-size memory, for the status page: its last state changes (up/down,
circuit, role) and the durations of its last probes.

The monitor writes here on the probe path, so writing stays cheap: a probe stores one float in a
preallocated array (a failed probe as its duration negated), a state change (rare) a few references
in preallocated slots. Nothing grows with time or with the number of probes; reading (``changes``,
``probes``) allocates, and runs only when a page is requested. Measured in
tests/unit/test_target_history.py (bytes per target, cost of a probe's write).
"""

from __future__ import annotations

import math
from array import array
from typing import NamedTuple

CHANGES_KEPT = 8  # state changes kept per target
PROBES_KEPT = 60  # probe durations kept per target (the sparkline)
DETAIL_CHARS = 160  # of a down change's error text
_FIELDS = 4  # kind, before, after, detail: one slot each per change


class Change(NamedTuple):
    """One state change of a target."""

    when: float  # wall clock (seconds since the epoch)
    kind: str  # "status" (up/down/unknown), "circuit" (closed/open/half_open) or "role"
    before: str
    after: str
    detail: str | None  # why it went down (the probe's secret-free error text), else None


class ProbeMark(NamedTuple):
    """One probe's duration and whether it succeeded."""

    seconds: float
    ok: bool


class TargetHistory:
    """The last ``CHANGES_KEPT`` changes and ``PROBES_KEPT`` probe durations of one target (rings)."""

    __slots__ = ("_changes", "_durations", "_fields", "_filled", "_next", "_when")

    def __init__(self) -> None:
        self._when = array("d", bytes(8 * CHANGES_KEPT))
        # the strings are the callers' own (state names, role names, the probe's error text): stored
        # by reference, so a change copies nothing
        self._fields: list[str | None] = [None] * (_FIELDS * CHANGES_KEPT)
        self._changes = 0  # changes recorded since the start
        # float32 is plenty for a sparkline; a failed probe is stored negated (-0.0 for an instant one)
        self._durations = array("f", bytes(4 * PROBES_KEPT))
        self._next = 0  # the slot the next probe's duration goes to
        self._filled = 0  # slots holding a duration (up to PROBES_KEPT)

    def probe(self, seconds: float, ok: bool) -> None:
        """Keep one probe's duration (the probe path: no allocation but a negated float for a
        failure; the indexes stay small, cached ints)."""
        index = self._next
        self._durations[index] = seconds if ok else -seconds
        self._next = index + 1 if index + 1 < PROBES_KEPT else 0
        if self._filled < PROBES_KEPT:
            self._filled += 1

    def change(self, kind: str, before: str, after: str, when: float, detail: str | None = None) -> None:
        """Keep one state change, dropping the oldest once ``CHANGES_KEPT`` are kept; ``detail`` is
        cut to ``DETAIL_CHARS``."""
        slot = self._changes % CHANGES_KEPT
        self._when[slot] = when
        base = slot * _FIELDS
        fields = self._fields
        fields[base] = kind
        fields[base + 1] = before
        fields[base + 2] = after
        fields[base + 3] = detail[:DETAIL_CHARS] if detail else None
        self._changes += 1

    @property
    def total_changes(self) -> int:
        """Changes recorded since the start (kept or not)."""
        return self._changes

    def changes(self) -> list[Change]:
        """The kept changes, newest first."""
        kept = min(self._changes, CHANGES_KEPT)
        found = []
        for back in range(1, kept + 1):
            slot = (self._changes - back) % CHANGES_KEPT
            base = slot * _FIELDS
            kind, before, after, detail = self._fields[base : base + _FIELDS]
            assert kind is not None and before is not None and after is not None
            found.append(Change(self._when[slot], kind, before, after, detail))
        return found

    def last_change_at(self) -> float | None:
        """When the newest kept change happened that is not a first observation (from ``unknown``):
        a target seen up since the exporter started has not changed."""
        for back in range(1, min(self._changes, CHANGES_KEPT) + 1):
            slot = (self._changes - back) % CHANGES_KEPT
            if self._fields[slot * _FIELDS + 1] != "unknown":
                return self._when[slot]
        return None

    def probes(self) -> list[ProbeMark]:
        """The kept probe durations, oldest first."""
        start = (self._next - self._filled) % PROBES_KEPT
        marks = []
        for offset in range(self._filled):
            value = self._durations[(start + offset) % PROBES_KEPT]
            marks.append(ProbeMark(abs(value), math.copysign(1.0, value) > 0))
        return marks
