"""Results in node_exporter's textfile-collector format, written atomically (a temp file in the same
directory, fsynced, renamed over the old one), so the collector never reads half a file.

What must survive a failed run (the last success's time and measurements) is read back from the
previous file: the file is the only state.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(gauges: list[Gauge], values: Mapping[str, float], labels: Mapping[str, str]) -> str:
    """Exposition text: HELP, TYPE and one sample of every gauge that has a value."""
    label_text = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    lines = []
    for gauge in gauges:
        if gauge.name not in values:
            continue
        lines.append(f"# HELP {gauge.name} {gauge.help}")
        lines.append(f"# TYPE {gauge.name} gauge")
        lines.append(f"{gauge.name}{{{label_text}}} {_number(values[gauge.name])}")
    return "\n".join(lines) + "\n"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)\s*$")


def read_values(path: Path) -> dict[str, float]:
    """Metric name -> value of every sample in a file written by ``write`` ({} if missing or unreadable)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            try:
                values[match.group(1)] = float(match.group(2))
            except ValueError:
                continue
    return values


def write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: the collector skips it
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
