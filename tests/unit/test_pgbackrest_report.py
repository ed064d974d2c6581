"""Parsing pgBackRest's report: real-shaped ``info`` and ``repo-ls`` output gives the newest backup of
each type and the archive's holes; anything else (bad JSON, wrong types, negative or non-finite
numbers, deep nesting, hostile names) is a ReportError naming the field, never an exception escaping,
never a value repeated."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest

from tierwatch.probes.pgbackrest import (
    ReportError,
    missing_segments,
    parse_archive_listing,
    parse_info,
)

# `pgbackrest info --output=json` of the lab (pgBackRest 2.45, PostgreSQL 15): full, incr, diff
INFO: list[dict[str, Any]] = [
    {
        "archive": [
            {
                "database": {"id": 1, "repo-key": 1},
                "id": "15-1",
                "max": "000000010000000000000007",
                "min": "000000010000000000000001",
            }
        ],
        "backup": [
            {
                "archive": {"start": "000000010000000000000002", "stop": "000000010000000000000003"},
                "backrest": {"format": 5, "version": "2.45"},
                "database": {"id": 1, "repo-key": 1},
                "error": False,
                "info": {
                    "delta": 23013126,
                    "repository": {"delta": 3502652, "size": 3502652},
                    "size": 23013126,
                },
                "label": "20261207-121444F",
                "lsn": {"start": "0/2000028", "stop": "0/3000050"},
                "prior": None,
                "reference": None,
                "timestamp": {"start": 1796645684, "stop": 1796645687},
                "type": "full",
            },
            {
                "archive": {"start": "000000010000000000000004", "stop": "000000010000000000000005"},
                "backrest": {"format": 5, "version": "2.45"},
                "database": {"id": 1, "repo-key": 1},
                "error": False,
                "info": {"delta": 8458, "repository": {"delta": 472, "size": 3502651}, "size": 23013126},
                "label": "20261207-121444F_20261207-121448I",
                "lsn": {"start": "0/4000028", "stop": "0/5000050"},
                "prior": "20261207-121444F",
                "reference": ["20261207-121444F"],
                "timestamp": {"start": 1796645688, "stop": 1796645690},
                "type": "incr",
            },
            {
                "archive": {"start": "000000010000000000000006", "stop": "000000010000000000000007"},
                "backrest": {"format": 5, "version": "2.45"},
                "database": {"id": 1, "repo-key": 1},
                "error": True,
                "info": {"delta": 8458, "repository": {"delta": 471, "size": 3502650}, "size": 23013126},
                "label": "20261207-121444F_20261207-121451D",
                "lsn": {"start": "0/6000028", "stop": "0/7000050"},
                "prior": "20261207-121444F",
                "reference": ["20261207-121444F"],
                "timestamp": {"start": 1796645691, "stop": 1796645693},
                "type": "diff",
            },
        ],
        "cipher": "none",
        "db": [{"id": 1, "repo-key": 1, "system-id": 7716534440091009457, "version": "15"}],
        "name": "main",
        "repo": [{"cipher": "none", "key": 1, "status": {"code": 0, "message": "ok"}}],
        "status": {"code": 0, "lock": {"backup": {"held": False}}, "message": "ok"},
    }
]
SHA = "56302b83a18b9548d976e3a386d9232a9d211944"


def listing(*names: str, time: int = 1796645683) -> bytes:
    """`repo-ls archive/main/15-1 --recurse --output=json` holding these files."""
    entries: dict[str, Any] = {".": {"type": "path"}, "0000000100000000": {"type": "path"}}
    for offset, name in enumerate(names):
        entries[name] = {"type": "file", "size": 73440, "time": time + offset}
    return json.dumps(entries).encode()


def seg(tli: int, number: int, suffix: str = ".gz", partial: bool = False) -> str:
    name = f"{tli:08X}{number // 256:08X}{number % 256:08X}"
    return f"{tli:08X}{number // 256:08X}/{name}{'.partial' if partial else ''}-{SHA}{suffix}"


def info_bytes(document: Any = INFO) -> bytes:
    return json.dumps(document).encode()


def test_real_info_gives_the_newest_backup_of_each_type() -> None:
    info = parse_info(info_bytes(), "main")
    assert (info.status_code, info.archive_id, info.missing) == (0, "15-1", False)
    full, incr, diff = (info.backups[kind] for kind in ("full", "incr", "diff"))
    assert (full.count, full.stop, full.duration, full.size, full.repository_size, full.error) == (
        1, 1796645687, 3, 23013126, 3502652, False,
    )  # fmt: skip
    assert (incr.stop, incr.duration, incr.repository_size) == (1796645690, 2, 472)
    assert diff.error is True


def test_the_newest_of_several_backups_of_a_type_counts() -> None:
    document = copy.deepcopy(INFO)
    older = copy.deepcopy(document[0]["backup"][1])
    older["timestamp"] = {"start": 1796640000, "stop": 1796640100}
    older["info"]["repository"]["delta"] = 999
    document[0]["backup"].append(older)  # listed last, but older
    incr = parse_info(info_bytes(document), "main").backups["incr"]
    assert (incr.count, incr.stop, incr.repository_size) == (2, 1796645690, 472)


def test_a_stanza_that_is_not_there() -> None:
    missing = [
        {"name": "nope", "status": {"code": 1, "message": "missing stanza path"}, "db": [], "backup": []}
    ]
    info = parse_info(info_bytes(missing), "nope")
    assert (info.status_code, info.missing, info.archive_id, info.backups) == (1, True, None, {})
    with pytest.raises(ReportError, match="not listed"):
        parse_info(info_bytes(), "other")


def test_no_backups_yet_is_a_valid_report() -> None:
    document = copy.deepcopy(INFO)
    document[0]["backup"] = []
    document[0]["status"] = {"code": 2, "message": "no valid backups"}
    info = parse_info(info_bytes(document), "main")
    assert (info.status_code, info.missing, info.backups) == (2, False, {})


def test_the_current_database_is_the_highest_db_id() -> None:
    document = copy.deepcopy(INFO)
    document[0]["db"].append({"id": 2, "repo-key": 1, "system-id": 1, "version": "16"})
    assert parse_info(info_bytes(document), "main").archive_id == "16-2"  # no archive entry yet
    document[0]["archive"].append({"database": {"id": 2, "repo-key": 1}, "id": "16-2"})
    assert parse_info(info_bytes(document), "main").archive_id == "16-2"


def set_path(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(document)
    node = changed
    for part in path[:-1]:
        node = node[part]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ((0, "status"), "ok", "status"),
        ((0, "status", "code"), "0", "status.code"),
        ((0, "status", "code"), 1.5, "status.code"),
        ((0, "status", "code"), KeyError, "status.code"),
        ((0, "backup"), {"a": 1}, "backup"),
        ((0, "backup", 0), "x", "backup[0]"),
        ((0, "backup", 0, "type"), "weekly", "backup[0].type"),
        ((0, "backup", 0, "type"), KeyError, "backup[0].type"),
        ((0, "backup", 0, "timestamp", "stop"), -5, "backup[0].timestamp.stop"),
        ((0, "backup", 0, "timestamp", "stop"), "1796645687", "backup[0].timestamp.stop"),
        ((0, "backup", 0, "timestamp", "start"), True, "backup[0].timestamp.start"),
        ((0, "backup", 1, "info", "size"), None, "backup[1].info.size"),
        ((0, "backup", 1, "info", "repository"), [], "backup[1].info.repository"),
        ((0, "backup", 2, "info", "repository", "delta"), -1, "backup[2].info.repository.delta"),
        ((0, "backup", 2, "error"), "yes", "backup[2].error"),
        ((0, "db"), "15", "db"),
        ((0, "db", 0, "id"), "1", "db[].id"),
        ((0, "archive", 0, "database"), None, "archive[].database"),
        ((0, "archive", 0, "id"), "../../../etc", "archive id"),
        ((0, "archive", 0, "id"), 151, "archive id"),
    ],
)
def test_wrong_shapes_name_the_field_and_never_the_value(
    path: tuple[Any, ...], value: Any, field: str
) -> None:
    document = set_path(INFO, path, value)
    with pytest.raises(ReportError) as caught:
        parse_info(info_bytes(document), "main")
    assert field in str(caught.value)
    if isinstance(value, str) and len(value) > 2:
        assert value not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"\xff\xfe[]",
        b"{}",
        b"null",
        b"[" * 200_000 + b"]" * 200_000,  # deeper than the parser's recursion limit
        b'[{"name": "main", "status": {"code": NaN}}]',
        b'[{"name": "main", "status": {"code": Infinity}}]',
        b'[{"name": "main", "status": {"code": 1e999}}]',
        b'[{"name": "main", "status": {"code": ' + b"9" * 5000 + b"}}]",  # past int's digit limit
        b'[{"name": "main", "status": {"code": -1}}]',
        b'[{"name": "main", "status": {"code": 100000}}]',
    ],
    ids=lambda raw: repr(raw[:24]),
)
def test_hostile_info_output_is_a_report_error(raw: bytes) -> None:
    with pytest.raises(ReportError):
        parse_info(raw, "main")


def test_real_listing_counts_segments_and_the_newest_push() -> None:
    raw = listing(
        *(seg(1, n) for n in range(1, 8)),
        "0000000100000000/000000010000000000000002.00000028.backup",  # not a segment
        "00000002.history",
        time=1796645683,
    )
    wal = parse_archive_listing(raw)
    assert (wal.segments, wal.missing) == (7, 0)
    assert wal.last_push == 1796645683 + 6  # the segment files' newest; the .backup file's is later


def test_a_hole_is_counted_whatever_the_compression_and_across_logs() -> None:
    names = [seg(1, n, suffix) for n, suffix in ((254, ".gz"), (255, ".lz4"), (257, ""), (258, ".zst"))]
    wal = parse_archive_listing(listing(*names))
    assert (wal.segments, wal.missing) == (4, 1)  # 256 (log 1, seg 0) is missing
    assert (wal.first, wal.last) == (254, 258)  # the archived range, in segment numbers


def test_an_empty_archive_has_no_range() -> None:
    wal = parse_archive_listing(listing())
    assert (wal.segments, wal.missing, wal.first, wal.last, wal.last_push) == (0, 0, None, None, None)


def test_another_timeline_or_a_partial_file_covers_a_number() -> None:
    # a promotion at segment 5: timeline 1 ends with 5.partial, timeline 2 goes on from 5
    names = [seg(1, 3), seg(1, 4), seg(1, 5, partial=True), seg(2, 5), seg(2, 6), seg(2, 8)]
    wal = parse_archive_listing(listing(*names))
    assert (wal.segments, wal.missing) == (6, 1)  # 7 only
    assert parse_archive_listing(listing(seg(1, 3), seg(1, 4, partial=True), seg(2, 5))).missing == 0


def test_an_empty_archive() -> None:
    wal = parse_archive_listing(json.dumps({".": {"type": "path"}}).encode())
    assert (wal.segments, wal.missing, wal.last_push) == (0, 0, None)
    assert missing_segments([]) == 0 and missing_segments([7]) == 0 and missing_segments([1, 4]) == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"[" * 100_000,
        json.dumps({seg(1, 1): {"type": "file", "time": -3}}).encode(),
        json.dumps({seg(1, 1): {"type": "file", "time": "yesterday"}}).encode(),
        json.dumps({seg(1, 1): {"type": "file"}}).encode(),
        json.dumps({seg(1, 1): "file"}).encode(),
        b'{"' + seg(1, 1).encode() + b'": {"type": "file", "time": NaN}}',
    ],
    ids=lambda raw: repr(raw[:24]),
)
def test_hostile_listing_is_a_report_error(raw: bytes) -> None:
    with pytest.raises(ReportError):
        parse_archive_listing(raw)


def test_names_that_only_look_like_segments_are_ignored() -> None:
    names = [
        seg(1, 1),
        "0000000100000000/00000001000000000000000Z-" + SHA,  # not hex
        "0000000100000000/000000010000000000000009",  # no checksum
        "0000000100000000/00000001000000000000000a-" + SHA,  # lower case
        "0000000100000000/000000010000000000000009-" + SHA + ".gz/x",  # a directory's child
    ]
    assert parse_archive_listing(listing(*names)).segments == 1


def test_a_large_listing_parses_quickly() -> None:
    names = [seg(1, n) for n in range(1, 200_001) if n != 777]
    raw = listing(*names)
    started = time.monotonic()
    wal = parse_archive_listing(raw)
    assert (wal.segments, wal.missing) == (199_999, 1)
    assert time.monotonic() - started < 10  # generous: a bound against quadratic work, not a benchmark
