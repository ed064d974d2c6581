"""Reads each cluster's pgBackRest repository on its own interval, off the probe loop, and exports
what it found (section "backups" of the metric catalogue).

For every cluster with ``backup.pgbackrest``: ``pgbackrest info --output=json``, then ``pgbackrest
repo-ls archive/STANZA/ARCHIVE-ID --recurse --output=json`` for the WAL archive of the stanza's
current database. Each command runs without a shell, as ``os_user`` when set, under ``timeout``, its
output cut at a byte bound (the process group is killed when either is passed); parsing is
probes/pgbackrest.py's, in a thread. The latest reading per cluster is kept; the collector renders it.

A failed read exports ``tierwatch_backup_info_up 0`` with the read's time and duration (and the
stanza's status code when ``info`` listed it) and drops every other series of the cluster: a
backup's age computed from a stale report would look fresh. The failure is logged (the kind, the
exit code and pgBackRest's error number; never its message, a path or an option).

Config reloads are followed by comparing the monitor's loaded config each second: a cluster whose
``backup.pgbackrest`` changed starts over, a removed one is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import LoadedConfig
from .config.cluster_backup import PgBackRestWatch
from .events import EventLog
from .gauge_families import Add, GaugeCollector
from .metric_catalog import (
    BACKUP_INFO_LAST_READ,
    BACKUP_INFO_READ_DURATION,
    BACKUP_INFO_UP,
    BACKUP_LAST_COMPLETION,
    BACKUP_LAST_DURATION,
    BACKUP_LAST_ERROR,
    BACKUP_LAST_REPOSITORY_SIZE,
    BACKUP_LAST_SIZE,
    BACKUP_STANZA_STATUS,
    BACKUP_TYPES,
    BACKUP_WAL_FIRST,
    BACKUP_WAL_LAST,
    BACKUP_WAL_LAST_PUSH,
    BACKUP_WAL_MISSING,
    BACKUP_WAL_SEGMENTS,
    BACKUPS,
)
from .probes.pgbackrest import ReportError, StanzaInfo, WalArchive, parse_archive_listing, parse_info

INFO_MAX_BYTES = 8 << 20
REPO_LS_MAX_BYTES = 64 << 20  # ~500 000 segment files (8 TB of WAL) in repo-ls's JSON
STDERR_KEEP_BYTES = 8 << 10  # only pgBackRest's error number is taken from it
READ_CHUNK = 1 << 16
KILL_WAIT = 5.0  # seconds for a killed command to be reaped
RECONCILE_SECONDS = 1.0
# console output off (stdout is the JSON report), errors on stderr for their number
QUIET = ("--log-level-console=off", "--log-level-stderr=error")
PGBACKREST_ERROR = re.compile(rb"ERROR: \[(\d{1,4})\]")


class CommandFailed(Exception):
    """A command did not give a usable output: ``kind`` is spawn, timeout, too_large or exit."""

    def __init__(self, kind: str, exit_code: int | None = None, error: str | None = None):
        super().__init__(kind)
        self.kind = kind
        self.exit_code = exit_code
        self.error = error  # pgBackRest's error number (e.g. 055), never its message


@dataclass(frozen=True)
class Reading:
    """One read of a cluster's repository."""

    ended: float  # Unix time
    duration: float
    info: StanzaInfo | None = None  # None: info gave no usable entry of the stanza
    wal: WalArchive | None = None
    failure: str | None = None  # None: the read succeeded
    details: dict[str, Any] = field(default_factory=dict)  # secret-free fields for the log

    @property
    def ok(self) -> bool:
        return self.failure is None


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes | None:
    """Everything ``stream`` gives until EOF, or None once it passed ``limit`` bytes."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await stream.read(READ_CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_head(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The first ``keep`` bytes of ``stream``; the rest is read and dropped (the writer never blocks)."""
    head = b""
    while chunk := await stream.read(READ_CHUNK):
        if len(head) < keep:
            head += chunk[: keep - len(head)]
    return head


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is its and its children's


def _close_transport(process: asyncio.subprocess.Process) -> None:
    transport = getattr(process, "_transport", None)  # asyncio keeps no public handle on it
    if transport is not None:
        transport.close()


async def run_command(argv: list[str], *, user: str | None, timeout: float, limit: int) -> bytes:
    """``argv``'s stdout (no shell; as ``user`` when set), within ``timeout`` seconds and ``limit``
    bytes; CommandFailed otherwise. The process group is killed on any way out before it ended."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd="/",
            user=user,
            start_new_session=True,
        )
    except (OSError, ValueError, KeyError):  # not found, not allowed, unknown user
        raise CommandFailed("spawn") from None
    assert process.stdout is not None and process.stderr is not None
    stderr = asyncio.ensure_future(_read_head(process.stderr, STDERR_KEEP_BYTES))
    try:
        async with asyncio.timeout(timeout):
            out = await _read_bounded(process.stdout, limit)
            if out is None:
                raise CommandFailed("too_large")
            code = await process.wait()
            head = await stderr
    except TimeoutError:
        raise CommandFailed("timeout") from None
    finally:
        if process.returncode is None:
            _kill_group(process)
        # our ends of the pipes closed now: a child that left the group cannot hold them (nor wait())
        _close_transport(process)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_WAIT)
        stderr.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stderr
    if code != 0:
        found = PGBACKREST_ERROR.search(head)
        raise CommandFailed("exit", code, found.group(1).decode() if found else None)
    return out


async def read_repository(watch: PgBackRestWatch) -> Reading:
    """Read ``watch``'s stanza once: info, then repo-ls of its current archive."""
    started_wall, started = time.time(), time.monotonic()
    info: StanzaInfo | None = None

    def done(failure: str | None = None, wal: WalArchive | None = None, **details: Any) -> Reading:
        duration = time.monotonic() - started
        return Reading(started_wall + duration, duration, info, wal, failure, details)

    base = [*watch.argv, *QUIET]
    try:
        raw = await run_command(
            [*base, "info", "--output=json"], user=watch.os_user, timeout=watch.timeout, limit=INFO_MAX_BYTES
        )
        info = await asyncio.to_thread(parse_info, raw, watch.stanza)
        if info.missing or info.archive_id is None:
            return done("stanza_missing", command="info", status_code=info.status_code)
        path = f"archive/{watch.stanza}/{info.archive_id}"
        raw = await run_command(
            [*base, "repo-ls", path, "--recurse", "--output=json"],
            user=watch.os_user,
            timeout=watch.timeout,
            limit=REPO_LS_MAX_BYTES,
        )
    except CommandFailed as exc:
        command = "repo-ls" if info is not None else "info"
        extra = {k: v for k, v in (("exit_code", exc.exit_code), ("pgbackrest_error", exc.error)) if v}
        return done(exc.kind, command=command, **extra)
    except ReportError as exc:
        return done("bad_report", command="repo-ls" if info is not None else "info", problem=str(exc))
    try:
        wal = await asyncio.to_thread(parse_archive_listing, raw)
    except ReportError as exc:
        return done("bad_report", command="repo-ls", problem=str(exc))
    return done(wal=wal)


class BackupWatch:
    """Keeps every configured cluster's latest Reading, each read on its cluster's interval."""

    def __init__(self, config: Callable[[], LoadedConfig], events: EventLog):
        self.config = config  # the running config (the monitor's, replaced by a reload)
        self.events = events
        self.readings: dict[tuple[str, str], Reading] = {}  # (tier, cluster) -> the latest
        self._loaded: LoadedConfig | None = None
        self._tasks: dict[tuple[str, str], tuple[PgBackRestWatch, asyncio.Task[None]]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Read every cluster now and then on its interval, following reloads, until ``stop``."""
        try:
            while not stop.is_set():
                self._reconcile(self.config())
                if self._retiring:
                    await asyncio.gather(*self._retiring, return_exceptions=True)
                    self._retiring.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RECONCILE_SECONDS)
        finally:
            tasks = [task for _, task in self._tasks.values()] + list(self._retiring)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()

    def _reconcile(self, loaded: LoadedConfig) -> None:
        if loaded is self._loaded:
            return
        self._loaded = loaded
        wanted = {
            (cluster.tier, cluster.name): cluster.backup.pgbackrest
            for cluster in loaded.config.clusters
            if cluster.backup is not None and cluster.backup.pgbackrest is not None
        }
        for key, (watch, task) in list(self._tasks.items()):
            if wanted.get(key) != watch:
                task.cancel()
                self._retiring.add(task)
                del self._tasks[key]
                self.readings.pop(key, None)
        for key, watch in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = (watch, asyncio.create_task(self._loop(key, watch)))

    async def _loop(self, key: tuple[str, str], watch: PgBackRestWatch) -> None:
        loop = asyncio.get_running_loop()
        previous: str | None = None
        while True:
            started = loop.time()
            try:
                reading = await read_repository(watch)
            except Exception as exc:  # noqa: BLE001 - a bug in a read must not end the cluster's watch
                reading = Reading(
                    time.time(),
                    loop.time() - started,
                    failure="error",
                    details={"problem": type(exc).__name__},
                )
            self.readings[key] = reading
            self._log(key, reading, previous)
            previous = reading.failure
            await asyncio.sleep(max(0.0, started + watch.interval - loop.time()))

    def _log(self, key: tuple[str, str], reading: Reading, previous: str | None) -> None:
        """A failure when it starts or changes kind, a recovery once; never every interval."""
        tier, cluster = key
        if reading.failure is not None and reading.failure != previous:
            self.events.emit(
                "backup_info_read_failed",
                "warning",
                tier=tier,
                cluster=cluster,
                failure=reading.failure,
                **reading.details,
            )
        elif reading.failure is None and previous is not None:
            self.events.emit("backup_info_read_recovered", tier=tier, cluster=cluster)


class BackupCollector(GaugeCollector):
    """Renders a BackupWatch's readings (cheap: a few series per cluster)."""

    def __init__(self, watch: BackupWatch):
        self.watch = watch

    def render(self, add: Add) -> None:
        for (tier, cluster), reading in sorted(self.watch.readings.items()):
            labels = [tier, cluster]
            add(BACKUP_INFO_UP, labels, 1 if reading.ok else 0)
            add(BACKUP_INFO_LAST_READ, labels, reading.ended)
            add(BACKUP_INFO_READ_DURATION, labels, reading.duration)
            if reading.info is not None:
                add(BACKUP_STANZA_STATUS, labels, reading.info.status_code)
            if not reading.ok or reading.info is None or reading.wal is None:
                continue
            for kind in BACKUP_TYPES:
                last = reading.info.backups.get(kind)
                add(BACKUPS, [*labels, kind], last.count if last else 0)
                if last is None:
                    continue
                add(BACKUP_LAST_COMPLETION, [*labels, kind], last.stop)
                add(BACKUP_LAST_DURATION, [*labels, kind], last.duration)
                add(BACKUP_LAST_SIZE, [*labels, kind], last.size)
                add(BACKUP_LAST_REPOSITORY_SIZE, [*labels, kind], last.repository_size)
                add(BACKUP_LAST_ERROR, [*labels, kind], 1 if last.error else 0)
            add(BACKUP_WAL_SEGMENTS, labels, reading.wal.segments)
            add(BACKUP_WAL_MISSING, labels, reading.wal.missing)
            if reading.wal.last_push is not None:
                add(BACKUP_WAL_LAST_PUSH, labels, reading.wal.last_push)
            if reading.wal.first is not None and reading.wal.last is not None:
                add(BACKUP_WAL_FIRST, labels, reading.wal.first)
                add(BACKUP_WAL_LAST, labels, reading.wal.last)
