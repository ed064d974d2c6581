"""The append-only audit trail: one JSON line per decision (what was seen, what was done, outcome).

Records are appended by a writer thread, in batches with one fsync per batch, so recording never
blocks the event loop on the disk. ``flush`` waits (without blocking the loop) until everything
recorded so far is on disk: the service awaits it before an irreversible step, and does not take it
when the trail cannot be written (``problem``).

A bad day does not stop the writer: a failed write or fsync (a full disk, an I/O error) cuts the file
back to its last complete record, keeps the batch and tries again with back-off, and clears
``problem`` by itself once a write succeeds. Before each batch it checks that the path still names
the open file, so a rotated (renamed, then created anew) or deleted trail is reopened; ``reopen``
(SIGHUP) does the same at once.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

TAIL_BYTES = 512 * 1024  # what GET /audit reads at most, from the end of the file
MAX_QUEUED = 100_000  # records waiting for the disk at most; past that new ones are counted as dropped
RETRY_FIRST, RETRY_MAX = 0.1, 5.0  # seconds between attempts after a failed write (doubling)
REPAIR_SCAN = 1 << 20  # how far back a half-written last line is looked for when the file is opened


class AuditUnavailable(RuntimeError):
    """The audit trail cannot be written: nothing that needs a record may go on."""


def error_name(exc: OSError) -> str:
    """The errno's symbolic name (ENOSPC, EIO): says why without a path or a message."""
    return errno.errorcode.get(exc.errno or 0, "OSError")


class AuditTrail:
    """Appends JSON lines to ``path`` from a background thread; fsynced before ``flush`` returns.
    ``on_health(problem)`` is called from the writer thread when the trail stops (problem) or starts
    again (None) being writable."""

    def __init__(self, path: Path, on_health: Callable[[str | None], None] | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._on_health = on_health
        self._fd = -1
        self._ident: tuple[int, int] = (0, 0)
        self._open()
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._queued = 0  # records handed to record() so far
        self._written = 0  # records on disk so far
        self._failures = 0  # failed write attempts so far
        self.problem: str | None = None  # why the trail cannot be written now, e.g. "ENOSPC"
        self.dropped = 0  # records refused because MAX_QUEUED were waiting
        self._reopen = False
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()

    @property
    def write_failures(self) -> int:
        """Failed write attempts since the start."""
        return self._failures

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Queue one record (never blocks on the disk); fields must hold no secret (callers pass
        names, states and reasons)."""
        entry = {"ts": round(time.time(), 3), "event": event, **fields}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
                return entry
            self._queue.append(line)
            self._queued += 1
            self._cond.notify_all()
        return entry

    def reopen(self) -> None:
        """Reopen the file by its path before the next batch (after a rotation; SIGHUP)."""
        with self._cond:
            self._reopen = True
            self._cond.notify_all()

    # --- the writer thread ---------------------------------------------------------------------------

    def _open(self) -> None:
        """Open (or create) the file at ``path`` and cut a half-written last line (a crash or a full
        disk mid-record) back to the last complete record."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            stat = os.fstat(fd)
            end = stat.st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                start = max(0, end - REPAIR_SCAN)
                cut = os.pread(fd, end - start, start).rfind(b"\n")
                os.ftruncate(fd, start + cut + 1 if cut >= 0 else start)
        except OSError:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ident = fd, (stat.st_dev, stat.st_ino)

    def _moved(self) -> bool:
        """Whether ``path`` no longer names the open file (renamed away, replaced or deleted)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._ident

    def _write_batch(self, data: bytes) -> None:
        if self._reopen or self._moved():
            self._reopen = False
            self._open()
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError:
            # never leave half a record: the next line would be glued to it
            try:
                if os.fstat(self._fd).st_size > start:
                    os.ftruncate(self._fd, start)
            except OSError:
                pass
            raise

    def _set_problem(self, problem: str | None) -> None:
        changed = problem != self.problem
        self.problem = problem
        if changed and self._on_health is not None:
            try:
                self._on_health(problem)
            except Exception:  # noqa: BLE001 - a failing log (the same full disk) must not stop the writer
                pass

    def _write_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue and self._closing:
                    return
                batch = list(self._queue)
            try:
                self._write_batch(b"".join(batch))
            except OSError as exc:
                with self._cond:
                    self._failures += 1
                    self._set_problem(error_name(exc))
                    self._cond.notify_all()
                    if self._closing:  # stopping with a disk that refuses: give up, do not hang
                        return
                    self._cond.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._written += len(batch)
                self._set_problem(None)
                self._cond.notify_all()

    # --- waiting and reading -------------------------------------------------------------------------

    def _wait_written(self, target: int, timeout: float | None) -> bool:
        with self._cond:
            failures = self._failures

            def settled() -> bool:
                # done, or a write failed meanwhile (or already fails): do not wait out the timeout
                return self._written >= target or self._failures > failures or self.problem is not None

            self._cond.wait_for(settled, timeout)
            return self._written >= target

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued so far is on disk (in a thread: the loop keeps running).
        False when a write fails meanwhile or the trail is already failing: the caller must not
        go on as if its records were kept."""
        with self._cond:
            target = self._queued
            if self._written >= target:
                return True
        return await asyncio.to_thread(self._wait_written, target, timeout)

    async def require(self, timeout: float = 10.0) -> None:
        """``flush``, raising AuditUnavailable when the records are not on disk."""
        if not await self.flush(timeout):
            raise AuditUnavailable(f"audit trail not writable ({self.problem or 'flush timed out'})")

    def tail(self, count: int, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
        """The last ``count`` records, read from at most the last ``max_bytes`` of the file ([] when
        the file is gone; blocking: call it in a thread)."""
        return read_tail(self.path, max_bytes, count)

    def read(self) -> list[dict[str, Any]]:
        """Every record on disk so far (for tests and tools; reads the whole file; [] when gone)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def close(self) -> None:
        """Write what is queued (one more try if the disk refuses), then close the file."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._writer.join(30)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_tail(path: Path, max_bytes: int, last: int | None = None) -> list[dict[str, Any]]:
    """The complete records in the last ``max_bytes`` of the trail at ``path``, oldest first (only the
    ``last`` ones when given): a line the window cuts at its start is dropped, and so is a last line
    without its newline (a record being written, or torn by a crash); a line that is not a JSON
    object is skipped. Reads at most ``max_bytes`` + 1 bytes however large the file ([] when it is
    gone; blocking: call it in a thread)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return []
    with handle:
        size = handle.seek(0, os.SEEK_END)
        start = max(0, size - max_bytes - 1)  # one byte more: is the window's first line whole?
        handle.seek(start)
        data = handle.read(size - start)  # at most that much, even if the file grew meanwhile
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a record not yet whole
    if start > 0:
        lines = lines[1:]  # up to the first newline: the byte before the window, or a cut line
    entries: list[dict[str, Any]] = []
    for line in lines if last is None else lines[max(0, len(lines) - last) :]:
        if line.strip():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


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
