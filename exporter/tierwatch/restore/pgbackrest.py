"""The pgBackRest commands a restore needs: ``info --output=json`` and ``restore`` into a new
directory, run as the set's OS user.

``restore`` is aimed at the run's own directories only: ``--pg1-path`` is the new data directory,
every tablespace is remapped below the run directory (by default pgBackRest restores tablespaces to
their original paths, which are production's), ``--reset-pg1-host`` keeps it on this machine, and
``--archive-mode=off`` keeps the restored server from pushing WAL into the production stanza.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..config.backups import PgBackRestSource
from .accounts import OsUser, run
from .outcome import StageError

INFO_TIMEOUT = 120.0


@dataclass(frozen=True)
class Backup:
    label: str
    kind: str  # full, diff, incr
    size: int  # bytes of the database it restores
    start: float
    stop: float
    pg_version: str | None


def base_argv(source: PgBackRestSource) -> list[str]:
    argv = shlex.split(source.command)
    if source.config:
        argv.append(f"--config={source.config}")
    return [*argv, f"--stanza={source.stanza}"]


def read_backups(source: PgBackRestSource, user: OsUser | None, timeout: float) -> list[Backup]:
    """The stanza's backups, oldest first (stage info)."""
    out = run(
        [*base_argv(source), "info", "--output=json"], user, timeout=min(timeout, INFO_TIMEOUT), stage="info"
    )
    try:
        stanzas = json.loads(out)
        entry = next(s for s in stanzas if s.get("name") == source.stanza)
        versions = {db["id"]: str(db["version"]) for db in entry.get("db", [])}
        backups = [
            Backup(
                label=str(item["label"]),
                kind=str(item["type"]),
                size=int(item["info"]["size"]),
                start=float(item["timestamp"]["start"]),
                stop=float(item["timestamp"]["stop"]),
                pg_version=versions.get(item.get("database", {}).get("id")),
            )
            for item in entry.get("backup", [])
        ]
    except (ValueError, KeyError, TypeError, StopIteration):
        raise StageError(
            "info", f"pgbackrest info gave no readable entry for stanza {source.stanza}"
        ) from None
    if not backups:
        status = entry.get("status", {}).get("message", "no backups")
        raise StageError("info", f"stanza {source.stanza} has no backup to restore ({status})")
    return sorted(backups, key=lambda b: b.stop)


def choose(backups: list[Backup], target: datetime | None) -> Backup:
    """The backup pgBackRest restores: the newest, or the newest that ended before ``target``."""
    if target is None:
        return backups[-1]
    before = [b for b in backups if b.stop <= target.timestamp()]
    if not before:
        raise StageError("info", "no backup ended before the target time")
    return before[-1]


def pg_time(target: datetime) -> str:
    """``target`` as PostgreSQL's recovery_target_time wants it (UTC)."""
    return target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def restore(
    source: PgBackRestSource,
    user: OsUser | None,
    *,
    data_dir: Path,
    tablespace_dir: Path,
    backup: Backup,
    target: datetime | None,
    target_action: str,
    timeout: float,
) -> None:
    """Restore ``backup`` (or, with ``target``, what pgBackRest picks for it) into ``data_dir``."""
    argv = [
        *base_argv(source),
        "restore",
        f"--pg1-path={data_dir}",
        "--reset-pg1-host",
        f"--tablespace-map-all={tablespace_dir}",
        "--archive-mode=off",
    ]
    if target is None:
        argv += [f"--set={backup.label}", "--type=default"]
    else:
        argv += ["--type=time", f"--target={pg_time(target)}", f"--target-action={target_action}"]
    run(argv, user, timeout=timeout, stage="restore", cwd=data_dir.parent)
