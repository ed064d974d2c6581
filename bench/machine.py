"""What the machine was and how busy it was during a bench: every result file carries this.

Usage in a bench (run as a script, so ``bench/`` is on ``sys.path``)::

    from machine import LoadAverage, machine

    load = LoadAverage()              # at the start of the run
    ...                               # the bench
    result = {..., "machine": machine(), "load": load.fields()}   # the end is read here
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, now."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """nproc, CPU model, kernel and Python of the machine running the bench."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


@dataclass
class LoadAverage:
    """The load average when the bench started; ``fields()`` adds the one at its end."""

    start: list[float] = field(default_factory=loadavg)

    def fields(self) -> dict[str, Any]:
        """``cpu_count``, ``loadavg_start`` and ``loadavg_end`` (1, 5, 15 min), the end read now."""
        return {"cpu_count": os.cpu_count(), "loadavg_start": self.start, "loadavg_end": loadavg()}
