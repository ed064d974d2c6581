"""The backups audit log: one JSON line per run, appended and fsynced before the command exits.

Lines hold names, stages, outcomes and measurements; never a query, a key, a password or a DSN.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def append(path: Path, event: str, **fields: Any) -> None:
    """Append one record ``{"ts", "event", **fields}`` to ``path`` (created 0640) and fsync it."""
    record = {"ts": round(time.time(), 3), "event": event, **fields}
    line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o640)
    try:
        data = memoryview(line)
        while data:  # O_APPEND: each write lands at the end, even beside another writer
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
