"""Clocks for windows that must not step: cooldowns and rate limits.

The wall clock steps (an NTP correction, a VM resumed, an operator fixing a wrong date); the time since
boot does not. A moment is kept as both, with the boot it belongs to: within one boot, windows are
measured on the boot clock (which survives a restart of the service, unlike a process's monotonic
clock); across a reboot only the wall clock relates two moments.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Clock(Protocol):
    def now(self) -> tuple[float, str, float]:
        """(wall time, boot id, seconds since that boot)."""
        ...


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # not Linux: a per-process id, so only the wall clock relates two processes
        return f"process-{time.time_ns()}"


def _since_boot() -> float:
    # CLOCK_BOOTTIME counts a suspend too (a resumed machine has really waited); monotonic elsewhere
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class SystemClock:
    """The machine's clocks."""

    def __init__(self) -> None:
        self.boot_id = _boot_id()

    def now(self) -> tuple[float, str, float]:
        return time.time(), self.boot_id, _since_boot()
