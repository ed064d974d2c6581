"""pgBackRest's own report of a stanza, parsed: ``pgbackrest info --output=json`` (backups by type,
the stanza's status, its current archive id) and ``pgbackrest repo-ls archive/STANZA/ARCHIVE-ID
--recurse --output=json`` (the WAL segment files, from which the holes in the archive are counted).

Pure functions of the commands' bytes (running them is backup_watch.py's). Anything that is not the
shape pgBackRest writes (bad JSON, wrong types, negative or non-finite numbers, deep nesting) raises
ReportError with a short message naming the field, never a value: the read then counts as failed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..metric_catalog import BACKUP_TYPES

# pgBackRest's status codes that mean the stanza is not there to read (missing stanza path / data)
MISSING_STANZA_CODES = frozenset({1, 3})
# ``<timeline><log><seg>`` (24 hex digits), ``.partial`` for the end of a timeline a promotion cut,
# then ``-<sha1>`` and the compression extension, if any
SEGMENT_FILE = re.compile(
    r"([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?-[0-9a-f]{40}(?:\.[a-z0-9]{1,8})?"
)
ARCHIVE_ID = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3})?-[0-9]{1,9}")  # e.g. 15-1, 9.6-2
SEGMENTS_PER_LOG = 256  # 16 MiB segments: a log file (4 GiB of WAL) holds 0x00..0xFF
MAX_SEGMENT_FILES = 4_000_000  # far beyond any bounded repo-ls output; a bound on the gap computation


class ReportError(ValueError):
    """The output is not a report pgBackRest writes; the message names the field, never a value."""


@dataclass(frozen=True)
class LastBackup:
    """The newest backup of one type, and how many of that type the repository holds."""

    count: int
    stop: float
    duration: float
    size: float
    repository_size: float
    error: bool


@dataclass(frozen=True)
class StanzaInfo:
    """What ``info`` says of the stanza."""

    status_code: int
    archive_id: str | None  # the current database's archive (None: no database known yet)
    backups: dict[str, LastBackup] = field(default_factory=dict)  # by type; absent types hold none

    @property
    def missing(self) -> bool:
        return self.status_code in MISSING_STANZA_CODES


@dataclass(frozen=True)
class WalArchive:
    """What ``repo-ls`` of the current archive shows."""

    segments: int
    missing: int
    last_push: float | None
    first: int | None = None  # the oldest and the newest segment number (log * 256 + segment)
    last: int | None = None


def _reject_constant(name: str) -> Any:
    raise ReportError(f"not JSON ({name} is not a number)")


def load_json(raw: bytes, what: str) -> Any:
    """``raw`` as JSON (UTF-8); NaN/Infinity, deep nesting and huge integers are refused."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except ReportError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: JSON, int digits limit
        raise ReportError(f"{what}: output is not valid JSON") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{where}: expected a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ReportError(f"{where}: expected a non-negative number")
    return number


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ReportError(f"{where}: expected an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ReportError(f"{where}: expected a list")
    return value


def parse_info(raw: bytes, stanza: str) -> StanzaInfo:
    """The entry of ``stanza`` in ``info --output=json``; ReportError if absent or malformed."""
    document = _list(load_json(raw, "info"), "info")
    entries = [e for e in document if isinstance(e, dict) and e.get("name") == stanza]
    if not entries:
        raise ReportError("info: the stanza is not listed")
    entry = entries[0]
    status = _mapping(entry.get("status"), "info: status")
    code = _number(status.get("code"), "info: status.code")
    if code != int(code) or code > 255:
        raise ReportError("info: status.code: expected a small integer")
    return StanzaInfo(
        status_code=int(code),
        archive_id=_current_archive_id(entry),
        backups=_last_backups(_list(entry.get("backup", []), "info: backup")),
    )


def _current_archive_id(entry: Mapping[str, Any]) -> str | None:
    """The archive id of the stanza's current database (the highest db id): from its entry in
    ``archive`` (the first repository's), else pgBackRest's own naming, ``<version>-<db id>``."""
    dbs = [_mapping(db, "info: db[]") for db in _list(entry.get("db", []), "info: db")]
    if not dbs:
        return None
    ids = [_number(db.get("id"), "info: db[].id") for db in dbs]
    current = max(ids)
    candidates = []
    for item in _list(entry.get("archive", []), "info: archive"):
        item = _mapping(item, "info: archive[]")
        database = _mapping(item.get("database"), "info: archive[].database")
        if _number(database.get("id"), "info: archive[].database.id") == current:
            repo = database.get("repo-key", 1)
            candidates.append((_number(repo, "info: archive[].database.repo-key"), item.get("id")))
    if candidates:
        archive_id = min(candidates, key=lambda c: c[0])[1]
    else:
        db = dbs[ids.index(current)]
        archive_id = f"{db.get('version')}-{int(current)}"
    if not isinstance(archive_id, str) or not ARCHIVE_ID.fullmatch(archive_id):
        raise ReportError("info: archive id: expected <version>-<db id>")
    return archive_id


def _last_backups(items: list[Any]) -> dict[str, LastBackup]:
    by_type: dict[str, list[tuple[float, float, float, float, bool]]] = {}
    for index, item in enumerate(items):
        where = f"info: backup[{index}]"
        item = _mapping(item, where)
        kind = item.get("type")
        if kind not in BACKUP_TYPES:
            raise ReportError(f"{where}.type: expected one of {', '.join(BACKUP_TYPES)}")
        stamps = _mapping(item.get("timestamp"), f"{where}.timestamp")
        start = _number(stamps.get("start"), f"{where}.timestamp.start")
        stop = _number(stamps.get("stop"), f"{where}.timestamp.stop")
        info = _mapping(item.get("info"), f"{where}.info")
        size = _number(info.get("size"), f"{where}.info.size")
        repository = _mapping(info.get("repository"), f"{where}.info.repository")
        delta = _number(repository.get("delta"), f"{where}.info.repository.delta")
        error = item.get("error", False)  # pgBackRest before 2.36 has no error flag
        if not isinstance(error, bool):
            raise ReportError(f"{where}.error: expected true or false")
        by_type.setdefault(kind, []).append((stop, max(stop - start, 0.0), size, delta, error))
    report = {}
    for kind, backups in by_type.items():
        stop, duration, size, delta, error = max(backups, key=lambda b: b[0])
        report[kind] = LastBackup(len(backups), stop, duration, size, delta, error)
    return report


def parse_archive_listing(raw: bytes) -> WalArchive:
    """``repo-ls ARCHIVE --recurse --output=json``: its WAL segment files counted, the holes between
    the oldest and the newest segment number (any timeline's file covers a number), the newest
    file's time. Other files (``.backup``, ``.history``, directories) are ignored."""
    listing = _mapping(load_json(raw, "repo-ls"), "repo-ls")
    if len(listing) > MAX_SEGMENT_FILES:
        raise ReportError("repo-ls: too many files")
    numbers: set[int] = set()
    files = 0
    newest: float | None = None
    for name, entry in listing.items():
        found = SEGMENT_FILE.fullmatch(name.rpartition("/")[2])
        if found is None:
            continue
        entry = _mapping(entry, "repo-ls: a segment file")
        if entry.get("type") != "file":
            continue
        stamp = _number(entry.get("time"), "repo-ls: a segment file's time")
        log, seg = int(found.group(2), 16), int(found.group(3), 16)
        if seg >= SEGMENTS_PER_LOG:
            raise ReportError("repo-ls: a segment name beyond 16 MiB segments")
        numbers.add(log * SEGMENTS_PER_LOG + seg)
        files += 1
        newest = stamp if newest is None else max(newest, stamp)
    return WalArchive(
        segments=files,
        missing=missing_segments(numbers),
        last_push=newest,
        first=min(numbers) if numbers else None,
        last=max(numbers) if numbers else None,
    )


def missing_segments(numbers: Iterable[int]) -> int:
    """How many numbers between the smallest and the largest of ``numbers`` are not among them."""
    present = set(numbers)
    if not present:
        return 0
    return max(present) - min(present) + 1 - len(present)
