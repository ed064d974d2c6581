"""The append-only audit trail: one JSON line per decision (what was seen, what was done, outcome)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditTrail:
    """Appends JSON lines to ``path``, fsynced, so a crash right after a decision still has it."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record; fields must hold no secret (callers pass names, states and reasons)."""
        entry = {"ts": round(time.time(), 3), "event": event, **fields}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
        return entry

    def read(self) -> list[dict[str, Any]]:
        """Every record so far (for tests and the status endpoint)."""
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
