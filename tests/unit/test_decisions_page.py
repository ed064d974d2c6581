"""The recovery service's decisions page (recovery/decisions_page.py) and the audit tail it reads
(audit.read_tail): only the tail of a huge trail is read, a torn last line is ignored, decisions
come newest first, bounded, and escaped."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

from tierwatch.recovery.audit import AuditTrail, read_tail
from tierwatch.recovery.decisions_page import (
    SHOWN,
    TAIL_BYTES,
    decision_of,
    read_decisions,
    render_decisions_page,
)

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def write_trail(path: Path, records: list[tuple[str, dict[str, object]]]) -> None:
    """Records written by the service's own writer (thread, fsync), then closed."""
    trail = AuditTrail(path)
    try:
        for event, fields in records:
            trail.record(event, **fields)
    finally:
        trail.close()


def test_decisions_from_a_trail_the_writer_wrote(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    base = {"alert": "RedisMasterDown", "key": "k1", "cluster": "cache-main", "target": "redis-a"}
    write_trail(
        path,
        [
            ("alert_accepted", {"alert": "RedisMasterDown", "key": "k1", "receiver": "recovery"}),
            ("action_started", {**base, "action": "redis_failover", "resumed": False, "dry_run": True}),
            ("facts", {**base, "action": "redis_failover", "new_primary": "redis-b"}),
            (
                "outcome",
                {**base, "action": "redis_failover", "outcome": "dry_run", "detail": "would promote"},
            ),
            ("blocked", {**base, "action": "redis_failover", "limit": "cooldown"}),
            ("action_interrupted", {**base, "action": "x", "reason": "shutdown", "then": "run_again"}),
            ("config_reloaded", {"source": "sighup", "clusters": 2}),
        ],
    )
    decisions = read_decisions(path)
    assert [d.outcome for d in decisions] == ["interrupted", "blocked", "dry_run", "started"]
    interrupted, blocked, dry_run, started = decisions
    assert (dry_run.alert, dry_run.action, dry_run.cluster, dry_run.target) == (
        "RedisMasterDown",
        "redis_failover",
        "cache-main",
        "redis-a",
    )
    assert dry_run.detail == "would promote" and blocked.detail == "limit: cooldown"
    assert started.detail == "dry run" and interrupted.detail == "shutdown, then run_again"
    assert all(d.when is not None for d in decisions)


def test_a_huge_trail_is_read_only_at_its_tail(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with open(path, "wb") as handle:
        handle.truncate(64 << 30)  # 64 GiB, sparse: reading it whole would not fit in memory
        handle.seek(0, os.SEEK_END)
        for i in range(5000):
            record = {"ts": 1.7e9 + i, "event": "outcome", "alert": f"A{i}", "outcome": "succeeded"}
            handle.write(json.dumps(record).encode() + b"\n")
    tracemalloc.start()
    try:
        entries = read_tail(path, TAIL_BYTES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * TAIL_BYTES, peak  # the window and its parsed records, never the file
    assert entries[-1]["alert"] == "A4999"
    # about 256 KiB of records, the first (cut by the window) dropped, no zero bytes of the hole
    assert 2000 < len(entries) < 5000
    numbers = [int(e["alert"][1:]) for e in entries]
    assert numbers == list(range(numbers[0], 5000))
    assert [d.alert for d in read_decisions(path, count=3)] == ["A4999", "A4998", "A4997"]


def test_a_window_starting_on_a_line_boundary_keeps_that_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = [json.dumps({"event": "outcome", "alert": f"A{i}"}).encode() + b"\n" for i in range(3)]
    path.write_bytes(b"".join(lines))
    window = len(lines[1]) + len(lines[2])  # exactly the last two records
    assert [e["alert"] for e in read_tail(path, window)] == ["A1", "A2"]
    assert [e["alert"] for e in read_tail(path, window - 1)] == ["A2"]  # A1 cut: dropped


def test_a_torn_last_line_and_junk_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_trail(path, [("outcome", {"alert": "Whole", "outcome": "succeeded", "detail": "ok"})])
    with open(path, "ab") as handle:
        handle.write(b"not json\n[1, 2]\n")
        handle.write(b'{"ts": 1, "event": "outcome", "alert": "Torn"}')  # no newline: still being written
    assert [e.get("alert") for e in read_tail(path, TAIL_BYTES)] == ["Whole"]
    assert [d.alert for d in read_decisions(path)] == ["Whole"]
    assert read_tail(tmp_path / "gone.jsonl", TAIL_BYTES) == []


def test_the_page_escapes_and_bounds_what_it_shows(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    hostile = {"alert": HOSTILE, "cluster": HOSTILE, "target": HOSTILE, "action": HOSTILE}
    write_trail(
        path,
        [("outcome", {**hostile, "outcome": HOSTILE, "detail": HOSTILE * 6}) for _ in range(3 * SHOWN)],
    )
    decisions = read_decisions(path)
    assert len(decisions) == SHOWN
    page = render_decisions_page(decisions)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("<tr>") == SHOWN + 1  # the header, then one row per decision
    assert len(page) < SHOWN * 3000  # each value cut to VALUE_CHARS
    assert "No decision" in render_decisions_page([])


def test_records_that_are_no_decision_or_odd_are_handled() -> None:
    assert decision_of({"event": "alert_accepted", "alert": "A"}) is None
    assert decision_of({"alert": "A"}) is None
    odd = decision_of({"event": "outcome", "ts": "yesterday", "alert": 5})
    assert odd is not None and odd.when is None and odd.alert == "5" and odd.outcome == "unknown"
    assert "?" in render_decisions_page([odd])
