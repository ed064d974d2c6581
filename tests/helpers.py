"""Small helpers shared by tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import os


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` in exposition ``text`` carrying all ``labels``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
