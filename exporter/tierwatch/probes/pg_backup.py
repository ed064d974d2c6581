"""PostgreSQL base-backup freshness, read from a file the backup job leaves (cluster ``backup:``).

PostgreSQL itself keeps no record of finished base backups (pg_stat_archiver covers WAL only), and
each backup tool keeps its own catalogue; so the source is a file, in the order it is trusted:

1. a ``START TIME: 2026-12-01 10:00:00 UTC`` line: the ``backup_label`` pg_basebackup writes into
   every plain-format backup (point at the newest backup's label, e.g. through a ``latest`` link);
2. a Unix timestamp as the whole content (``date +%s > FILE`` at the end of a backup script);
3. otherwise the file's modification time (``touch FILE`` after a successful backup).

A missing or unreadable file reads as 0 (no backup known), so the age alert fires rather than going
quiet. Only the cluster's primary reports it: one series per cluster.
"""

from __future__ import annotations

import asyncio
import os
import re
from datetime import UTC, datetime, timedelta, timezone

from ..metric_catalog import metric
from .base import Observation

MAX_READ = 64 * 1024  # a backup_label is a few hundred bytes; the rest of a big file is ignored
START_TIME = re.compile(
    r"^START TIME: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ?(UTC|GMT|[+-]\d\d(?::?\d\d)?)?\s*$", re.MULTILINE
)
TIMESTAMP = re.compile(r"^\s*(\d{9,11}(?:\.\d+)?)\s*$")

BASE_BACKUP_TIME = metric(
    "tierwatch_pg_base_backup_timestamp_seconds",
    "gauge",
    "On the primary of a cluster with backup.last_backup_file: Unix time of the last base backup, read "
    "from that file (backup_label START TIME, a Unix timestamp, or its mtime); 0 if it is missing or "
    "unreadable.",
    section="postgres",
)


def _zone(text: str | None) -> timezone:
    """UTC for ``UTC``/``GMT``/no zone, a fixed offset for ``+01``/``-05:30``."""
    if text is None or text in ("UTC", "GMT"):
        return UTC
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
    return timezone(timedelta(minutes=minutes if text[0] == "+" else -minutes))


def backup_time(path: str) -> float:
    """The last base backup's Unix time according to ``path``; 0.0 when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(MAX_READ).decode("utf-8", "replace")
            mtime = os.fstat(handle.fileno()).st_mtime
    except OSError:
        return 0.0
    found = START_TIME.search(head)
    if found:  # a zone name (CET) does not match: its offset is not knowable here, the mtime is used
        stamp = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S")
        return stamp.replace(tzinfo=_zone(found.group(2))).timestamp()
    number = TIMESTAMP.match(head)
    if number:
        return float(number.group(1))
    return mtime


async def observe_base_backup(path: str, obs: Observation) -> None:
    """Add the base backup's time read from ``path`` (off the event loop: the file may be remote)."""
    obs.add(BASE_BACKUP_TIME, await asyncio.to_thread(backup_time, path))
