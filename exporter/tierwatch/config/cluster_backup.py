"""A cluster's ``backup:`` section: what the exporter watches of the cluster's backups.

PostgreSQL: the base-backup file (``last_backup_file``, probes/pg_backup.py), the pgBackRest
repository read on its own interval (``pgbackrest``, backup_watch.py) and a heartbeat row the
primary's probe writes (``heartbeat_table``); Redis: a heartbeat key the master's probe sets
(``heartbeat_key``). Which key belongs to which tier is the tier catalogue's ``backup_keys``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from ..durations import parse_duration
from ..tier_catalog import BACKUP_KEY_TIER, BACKUP_TIERS
from .target import _Strict

Duration = Annotated[float, BeforeValidator(parse_duration)]
MIN_READ_INTERVAL = 10.0  # pgBackRest's info and repo-ls read the repository: not a per-probe cost
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
TABLE_PATTERN = re.compile(rf"{_IDENTIFIER}(?:\.{_IDENTIFIER})?")
STANZA_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
OS_USER_PATTERN = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _matching(pattern: re.Pattern[str], expectation: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(expectation)
        return value

    return AfterValidator(check)


class PgBackRestWatch(_Strict):
    """A pgBackRest stanza whose ``info`` and WAL archive the exporter reads every ``interval``."""

    stanza: Annotated[
        str, _matching(STANZA_PATTERN, "expected a stanza name of letters, digits, '.', '_', '-'")
    ]
    config: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    command: Annotated[str, Field(min_length=1, max_length=4096)] = "pgbackrest"
    os_user: Annotated[str, _matching(OS_USER_PATTERN, "expected a user name such as postgres")] | None = None
    interval: Duration = 60.0
    timeout: Duration = 30.0  # per command

    @property
    def argv(self) -> list[str]:
        """The command and the options every call takes (``--config``, ``--stanza``)."""
        config = [f"--config={self.config}"] if self.config else []
        return [*shlex.split(self.command), *config, f"--stanza={self.stanza}"]


class BackupConfig(_Strict):
    # PostgreSQL base-backup freshness (probes/pg_backup.py): the backup's time is read from this file
    last_backup_file: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    pgbackrest: PgBackRestWatch | None = None
    # written by the primary's probe: INSERT (1, now()) ... ON CONFLICT (id) DO UPDATE, quoted as written
    heartbeat_table: (
        Annotated[str, _matching(TABLE_PATTERN, "expected a table name such as public.tierwatch_heartbeat")]
        | None
    ) = None
    # set by the master's probe to the Unix time
    heartbeat_key: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    @property
    def heartbeat_table_parts(self) -> tuple[str, ...]:
        """``heartbeat_table`` as identifiers (schema, table) or (table,), for psycopg.sql.Identifier."""
        return tuple(self.heartbeat_table.split(".")) if self.heartbeat_table else ()


def cluster_backup_problems(
    tier: str, backup: BackupConfig, loc: tuple[Any, ...]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Problems of a cluster's ``backup:`` that its model cannot see: the cluster's tier, an empty
    section, relative paths, the pgBackRest read's timing. Values are never repeated."""
    if tier not in BACKUP_TIERS:
        yield loc, f"backup is only valid on a cluster of tier {' or '.join(BACKUP_TIERS)}"
        return
    keys = [key for key in BACKUP_KEY_TIER if getattr(backup, key) is not None]
    if not keys:
        expected = ", ".join(key for key, owner in BACKUP_KEY_TIER.items() if owner == tier)
        yield loc, f"expected at least one of: {expected}"
    for key in keys:
        if BACKUP_KEY_TIER[key] != tier:
            yield (*loc, key), f"is only valid on a cluster of tier {BACKUP_KEY_TIER[key]}"
    if backup.last_backup_file is not None and not os.path.isabs(backup.last_backup_file):
        yield (*loc, "last_backup_file"), "expected an absolute path"
    if backup.pgbackrest is not None:
        yield from _pgbackrest_problems(backup.pgbackrest, (*loc, "pgbackrest"))


def _pgbackrest_problems(
    watch: PgBackRestWatch, loc: tuple[Any, ...]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    if watch.config is not None and (not os.path.isabs(watch.config) or "\0" in watch.config):
        yield (*loc, "config"), "expected an absolute path"
    try:
        command = shlex.split(watch.command)
    except ValueError:
        command = []
    if not command or "\0" in watch.command:
        yield (*loc, "command"), "expected a command such as pgbackrest or /usr/bin/pgbackrest (no shell)"
    if watch.interval < MIN_READ_INTERVAL:
        yield (*loc, "interval"), f"expected at least {MIN_READ_INTERVAL:g}s, got {watch.interval:g}s"
    if watch.timeout >= watch.interval:
        yield (
            (*loc, "timeout"),
            f"expected a timeout below the interval ({watch.interval:g}s), got {watch.timeout:g}s"
            + ("" if "timeout" in watch.model_fields_set else " (the default)"),
        )
