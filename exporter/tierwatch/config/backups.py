"""The top-level ``backups:`` section: restore tests and Redis snapshots (``tierwatch restore-test``,
``tierwatch pitr``, ``tierwatch redis-snapshot``).

Each set is one backup source of one cluster: a pgBackRest stanza (PostgreSQL) or a directory of RDB
snapshots (Redis), with what a restored copy must show to count as verified. Problems never repeat a
value (a query, a key or a path may sit next to something secret).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ..durations import parse_duration
from .target import NAME_PATTERN, Name, _Strict

Duration = Annotated[float, BeforeValidator(parse_duration)]
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
_TABLE = re.compile(rf"^{_IDENTIFIER}(\.{_IDENTIFIER})?$")
_STANZA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OS_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _absolute_path(value: str) -> str:
    if not value or "\0" in value or len(value) > 4096 or not os.path.isabs(value):
        raise ValueError("expected an absolute path")
    return os.path.normpath(value)


def _matching(pattern: re.Pattern[str], expectation: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(expectation)
        return value

    return AfterValidator(check)


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
Key = Annotated[str, Field(min_length=1, max_length=1024)]
Database = Annotated[str, Field(min_length=1, max_length=63)]


class PgBackRestSource(_Strict):
    """A pgBackRest stanza; ``os_user`` runs pgbackrest and the restored server (needed as root)."""

    stanza: Annotated[str, _matching(_STANZA, "expected a stanza name of letters, digits, '.', '_', '-'")]
    config: AbsolutePath | None = None
    command: Annotated[str, Field(min_length=1, max_length=4096)] = "pgbackrest"
    os_user: Annotated[str, _matching(_OS_USER, "expected a user name such as postgres")] | None = None
    pg_bin_dir: AbsolutePath | None = None  # default: the newest /usr/lib/postgresql/*/bin


class RedisSource(_Strict):
    """A directory of RDB snapshots (written by ``tierwatch redis-snapshot``), the newest ``keep`` kept."""

    directory: AbsolutePath
    keep: Annotated[int, Field(ge=1, le=10_000)] = 7


class VerifyQuery(_Strict):
    """A query returning one number that a restored database must give (within min/max, or equal)."""

    name: Name
    query: Annotated[str, Field(min_length=1, max_length=10_000)]
    database: Database | None = None  # default: the set's database
    min: float | None = None
    max: float | None = None
    equals: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> VerifyQuery:
        if self.equals is not None and (self.min is not None or self.max is not None):
            raise ValueError("expected either equals or min/max, not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("expected min <= max")
        return self


class BackupSet(_Strict):
    name: Name  # the ``backup`` label
    cluster: Name
    pgbackrest: PgBackRestSource | None = None
    redis: RedisSource | None = None
    database: Database = "postgres"  # postgres: where the heartbeat table is, and verify's default
    verify: list[VerifyQuery] = []  # postgres
    verify_keys: list[Key] = []  # redis
    min_keys: Annotated[int, Field(ge=0)] | None = None  # redis
    heartbeat_table: (
        Annotated[str, _matching(_TABLE, "expected a table name such as public.tierwatch_heartbeat")] | None
    ) = None
    heartbeat_key: Key | None = None  # redis
    timeout: Duration = 1800.0
    min_free_bytes: Annotated[int, Field(ge=0)] | None = None

    @property
    def tier(self) -> str:
        return "postgres" if self.pgbackrest is not None else "redis"


class BackupsSettings(_Strict):
    textfile_dir: AbsolutePath  # node_exporter's textfile collector directory
    scratch_dir: AbsolutePath  # restores go below it and are removed after
    audit_log: AbsolutePath  # one JSON line per run
    sets: Annotated[list[BackupSet], Field(min_length=1)]

    def find(self, name: str) -> BackupSet | None:
        return next((s for s in self.sets if s.name == name), None)


_POSTGRES_KEYS = ("verify", "heartbeat_table", "database")
_REDIS_KEYS = ("verify_keys", "min_keys", "heartbeat_key")


def backups_problems(
    backups: BackupsSettings, clusters: Sequence[Any]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Problems that need the rest of the config (a set's cluster must exist and have the right tier)."""
    tiers = {cluster.name: cluster.tier for cluster in clusters}
    if os.path.normpath(backups.scratch_dir) == "/":
        yield ("backups", "scratch_dir"), "expected a directory of its own, not /"
    seen: set[str] = set()
    for index, entry in enumerate(backups.sets):
        loc: tuple[Any, ...] = ("backups", "sets", index)
        if entry.name in seen:
            yield (*loc, "name"), f"duplicate backup set name {entry.name!r}"
        seen.add(entry.name)
        if (entry.pgbackrest is None) == (entry.redis is None):
            yield loc, "expected exactly one of pgbackrest or redis"
            continue
        tier = entry.tier
        other_keys = _REDIS_KEYS if tier == "postgres" else _POSTGRES_KEYS
        for key in other_keys:
            if key in entry.model_fields_set and getattr(entry, key) not in (None, []):
                source = "pgbackrest" if tier == "redis" else "redis"
                yield (*loc, key), f"is only valid on a set with {source}"
        actual = tiers.get(entry.cluster)
        if actual is None:
            yield (*loc, "cluster"), "no cluster of that name in clusters"
        elif actual != tier:
            source = "pgbackrest" if tier == "postgres" else "redis"
            yield (*loc, "cluster"), f"expected a cluster of tier {tier} (a {source} set)"
        names: set[str] = set()
        for qi, query in enumerate(entry.verify):
            if query.name in names:
                yield (*loc, "verify", qi, "name"), f"duplicate verify name {query.name!r}"
            names.add(query.name)


def valid_name(value: str) -> bool:
    """Whether ``value`` is a name the config accepts (safe in a label and a file name)."""
    return re.fullmatch(NAME_PATTERN, value) is not None
