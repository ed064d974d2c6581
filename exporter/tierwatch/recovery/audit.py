"""The append-only audit trail: one JSON line per decision (what was seen, what was done, outcome).

Records are appended by a writer thread, in batches with one fsync per batch, so recording never
blocks the event loop on the disk. ``flush`` waits (without blocking the loop) until everything
recorded so far is on disk: the service awaits it before an irreversible step.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

TAIL_BYTES = 512 * 1024  # what GET /audit reads at most, from the end of the file


class AuditTrail:
    """Appends JSON lines to ``path`` from a background thread; fsynced before ``flush`` returns."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._queued = 0  # records handed to record() so far
        self._written = 0  # records on disk so far
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Queue one record (never blocks on the disk); fields must hold no secret (callers pass
        names, states and reasons)."""
        entry = {"ts": round(time.time(), 3), "event": event, **fields}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._cond:
            self._queue.append(line)
            self._queued += 1
            self._cond.notify_all()
        return entry

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                batch = list(self._queue)
                self._queue.clear()
            data = b"".join(batch)
            while data:
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
            with self._cond:
                self._written += len(batch)
                self._cond.notify_all()

    def _wait_written(self, target: int, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._written >= target, timeout)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued so far is on disk (in a thread: the loop keeps running)."""
        with self._cond:
            target = self._queued
        return await asyncio.to_thread(self._wait_written, target, timeout)

    def tail(self, count: int, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
        """The last ``count`` records, read from at most the last ``max_bytes`` of the file (blocking:
        call it in a thread)."""
        with open(self.path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            handle.seek(start)
            data = handle.read(size - start)
        lines = data.split(b"\n")
        if start > 0:
            lines = lines[1:]  # the first line is cut
        entries = []
        for line in lines[-count - 1 :]:
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue
        return entries[-count:]

    def read(self) -> list[dict[str, Any]]:
        """Every record on disk so far (for tests and tools; reads the whole file)."""
        with open(self.path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def close(self) -> None:
        """Write what is queued, then close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(30)
        os.close(self._fd)


class RateLimitedAudit:
    """Audits a repetitive event at most once per ``interval`` seconds, with the number of the
    occurrences left out since the last record (for rejections a flood could otherwise write)."""

    def __init__(self, trail: AuditTrail, interval: float = 10.0):
        self.trail = trail
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def record(self, event: str, reason: str, **fields: Any) -> None:
        """Record ``event`` for ``reason`` unless one was recorded within the interval."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        self.trail.record(event, reason=reason, suppressed_since_last=suppressed, **fields)

    def close(self, event: str) -> None:
        """Record the counts still held back."""
        for reason, suppressed in self._suppressed.items():
            self.trail.record(event, reason=reason, suppressed_since_last=suppressed)
        self._suppressed.clear()
