"""The RDB files of a Redis set's directory: ``SET-YYYYMMDDTHHMMSSZ.rdb``, written by redis-snapshot."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path


def snapshot_name(set_name: str, when: float) -> str:
    return f"{set_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(when))}.rdb"


def snapshots(directory: Path, set_name: str) -> list[Path]:
    """The set's snapshots (regular files, never links), oldest first."""
    pattern = re.compile(rf"^{re.escape(set_name)}-\d{{8}}T\d{{6}}Z\.rdb$")
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    found = [
        Path(entry.path)
        for entry in entries
        if pattern.match(entry.name) and stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode)
    ]
    return sorted(found, key=lambda p: p.name)


def newest_snapshot(directory: Path, set_name: str) -> Path | None:
    """The newest snapshot of the set; else the newest ``*.rdb`` regular file."""
    own = snapshots(directory, set_name)
    if own:
        return own[-1]
    try:
        others = [
            Path(e.path)
            for e in os.scandir(directory)
            if e.name.endswith(".rdb") and stat.S_ISREG(e.stat(follow_symlinks=False).st_mode)
        ]
    except OSError:
        return None
    return max(others, key=lambda p: p.stat().st_mtime, default=None)
