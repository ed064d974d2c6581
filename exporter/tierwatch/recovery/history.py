"""What the audit trail says about a cluster's past failovers (for the rejoin actions: the server a
returning old primary must follow is the one the last audited failover promoted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes read at a time, from the end of the file


def last_failover(path: Path, cluster: str) -> dict[str, Any] | None:
    """The ``facts`` record of ``cluster``'s last failover that promoted a server (it names a
    ``new_primary``; a dry run's ``would_promote`` does not count), newest first, or None. Reads the
    file backwards in chunks and parses only the lines that can match (blocking: run it in a thread)."""
    if not path.exists():
        return None
    with open(path, "rb") as handle:
        end = handle.seek(0, 2)
        tail = b""
        while end > 0:
            start = max(0, end - CHUNK)
            handle.seek(start)
            data = handle.read(end - start) + tail
            lines = data.split(b"\n")
            tail = lines[0] if start > 0 else b""
            for line in reversed(lines[1:] if start > 0 else lines):
                found = _match(line, cluster)
                if found is not None:
                    return found
            end = start
    return None


def _match(line: bytes, cluster: str) -> dict[str, Any] | None:
    if b'"new_primary"' not in line or b'"event":"facts"' not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if entry.get("cluster") != cluster or not entry.get("new_primary"):
        return None
    return dict(entry)
