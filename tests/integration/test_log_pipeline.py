"""The lab's log pipeline against the real daemons: Debian's rsyslogd as the central collector
(stack/rsyslog.py) and mtail reading its central.log (stack/mtail.py).

Checked: the central line's fields come from the tag (syslog) or the collector's config (files), never
from the message; HAProxy's native syslog reaches it over UDP and over the unix socket; PostgreSQL's
multi-line reports become one line and Redis' file prefix goes; hostile messages (newlines, control
characters, unicode, a forged central line) stay one line with the sender's own fields; a sender cannot
claim a file's tag, an unregistered tag or a malformed one (rejected.log has them); the output stays
within its size bound through many rotations while mtail counts every line; mtail keeps counting after
central.log is rotated by someone else or deleted (and the collector reopens it); every process is gone
when the stack closes.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tierwatch_lab.stack import Stack, StackError, wait_for
from tierwatch_lab.stack.haproxy import start_haproxy, start_write_lb
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.mtail import MtailServer, check_programs, start_mtail
from tierwatch_lab.stack.rsyslog import LogCollector, parse_line, start_collector

COUNT_PROGRAM = """\
counter pipeline_lines_total by tier, cluster, target, region, source
/^\\S+ (?P<tier>\\S+) (?P<cluster>\\S+) (?P<target>\\S+) (?P<region>\\S+) (?P<source>\\S+) / {
  pipeline_lines_total[$tier][$cluster][$target][$region][$source]++
}
"""
LB = ("lb", "edge", "lb-1", "primary", "haproxy")


def programs(tmp_path: Path) -> Path:
    directory = tmp_path / "progs"
    directory.mkdir()
    (directory / "count.mtail").write_text(COUNT_PROGRAM)
    return directory


def send(collector: LogCollector, tag: str, message: bytes) -> None:
    """One RFC 3164 datagram as HAProxy sends it, to the collector's UDP input."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"<134>Dec  7 12:00:00 " + tag.encode() + b"[42]: " + message, collector.address)


class Sender:
    """A thread sending numbered lines under one tag at a steady rate until stopped."""

    def __init__(self, collector: LogCollector, tag: str, rate: float):
        self.collector, self.tag, self.rate = collector, tag, rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        padding = b" " + b"x" * 80
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            start = time.monotonic()
            while not self._stop.is_set():
                head = f"<134>Dec  7 12:00:00 {self.tag}[42]: line {self.sent}".encode()
                sock.sendto(head + padding, self.collector.address)
                self.sent += 1
                delay = start + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def counted(mtail: MtailServer, **labels: str) -> float:
    return mtail.value("pipeline_lines_total", **labels) or 0.0


def kept_lines(collector: LogCollector) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in collector.files_kept())


def udp_listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/udp has them) bound to UDP ``port``."""
    found = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            address, _, hex_port = line.split()[1].partition(":")
            if int(hex_port, 16) == port:
                found.add(address)
    return found


def test_fields_come_from_the_tag_and_the_config_never_from_the_message(stack: Stack, tmp_path: Path) -> None:
    collector = start_collector(stack)
    assert udp_listeners(collector.port) == {"0100007F"}  # 127.0.0.1 only
    tag = collector.tag(*LB)
    pg_log, redis_log, app_log = (tmp_path / n for n in ("pg-1.log", "redis-a.log", "es-1.log"))
    with collector.batch():  # registered after the start: one restart for the three
        collector.watch_file(pg_log, "postgres", "main-db", "pg-1", "primary", "postgres")
        collector.watch_file(redis_log, "redis", "cache-main", "redis-a", "failover", "redis")
        collector.watch_file(app_log, "app", "web", "es-1", "primary", "app")
    send(collector, tag, b"GET /work 200")
    pg_log.write_text(
        "00000 LOG:  database system is ready to accept connections\n"
        "40P01 ERROR:  deadlock detected\n"
        "40P01 DETAIL:  Process 1 waits for ShareLock on transaction 7; blocked by process 2.\n"
        "\tProcess 2 waits for ShareLock on transaction 8; blocked by process 1.\n"
        "40P01 STATEMENT:  UPDATE t SET v = 1 WHERE id = 2\n"
        "00000 LOG:  checkpoint starting: time\n"
    )
    redis_log.write_text("4242:M 07 Dec 2026 12:00:00.123 # Background saving error\n")
    app_log.write_text('{"msg":"listening","port":3001}\n')

    checkpoint = collector.wait_for_line(
        lambda line: "checkpoint starting" in line.message, what="the last PG line"
    )
    wait_for(lambda: len(collector.lines()) == 6, 10, "the six lines (1 LB, 3 PostgreSQL, Redis, app)")
    lines = collector.lines()
    assert [
        (ln.tier, ln.cluster, ln.target, ln.region, ln.source) for ln in lines if ln.source == "haproxy"
    ] == [LB]
    pg = [ln.message for ln in lines if ln.source == "postgres"]
    assert pg == [
        "00000 LOG:  database system is ready to accept connections",
        "40P01 ERROR:  deadlock detected#01240P01 DETAIL:  Process 1 waits for ShareLock on transaction 7; "
        "blocked by process 2.#012#011Process 2 waits for ShareLock on transaction 8; blocked by process 1."
        "#01240P01 STATEMENT:  UPDATE t SET v = 1 WHERE id = 2",
        "00000 LOG:  checkpoint starting: time",
    ]
    (redis,) = [ln for ln in lines if ln.source == "redis"]
    assert (redis.cluster, redis.target, redis.region, redis.message) == (
        "cache-main", "redis-a", "failover", "Background saving error",
    )  # fmt: skip
    (app,) = [ln for ln in lines if ln.source == "app"]
    assert app.message == '{"msg":"listening","port":3001}' and app.tier == "app"
    stamp = dt.datetime.fromisoformat(checkpoint.time)  # RFC 3339, the collector's clock
    assert stamp.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 30
    assert sum(1 for proc in stack.processes if proc.running() and proc.name == "rsyslogd") == 1


def test_haproxy_logs_requests_natively_over_udp_and_the_socket(stack: Stack) -> None:
    collector = start_collector(stack)
    backend = start_http_backend(stack, "es-1")
    servers = [("es-1", backend.port)]
    lb1 = start_haproxy(stack, "lb-1", servers, log=collector.syslog_target(*LB))
    edge2 = ("lb", "edge", "lb-2", "primary", "haproxy")
    lb2 = start_haproxy(stack, "lb-2", servers, log=collector.syslog_target(*edge2, via="socket"))
    write = ("lb", "write-lbs", "lb-pg-write", "primary", "haproxy")
    write_lb = start_write_lb(stack, "lb-pg-write", "be_pg", servers, log=collector.syslog_target(*write))
    for lb in (lb1, lb2):
        assert httpx.get(f"http://127.0.0.1:{lb.port}/work?q=a%20b", timeout=5).status_code == 200
        assert httpx.get(lb.url, timeout=5).status_code == 200  # monitor-uri: not logged
    httpx.get(f"http://127.0.0.1:{write_lb.port}/tcp", timeout=5)

    def by(target: str) -> list[str]:
        return [ln.message for ln in collector.lines() if ln.target == target]

    wait_for(lambda: all(by(t) for t in ("lb-1", "lb-2", "lb-pg-write")), 10, "a line of each LB")
    for target in ("lb-1", "lb-2"):
        (message,) = by(target)  # one request line: no /health, no readiness probe (dontlognull)
        assert " fe_web be_app/es-1 " in message and " 200 " in message and " ---- " in message
        assert message.endswith('"GET /work?q=a%20b HTTP/1.1"')
    (tcp,) = by("lb-pg-write")
    assert " fe_write be_pg/es-1 " in tcp and " -- " in tcp  # option tcplog: termination state
    assert not collector.rejected.exists()


HOSTILE = [
    b"two\nlines",
    b"tab\there and a CR\r and an escape \x1b[31mred",
    "unicode é ✓ 日本語 🚀".encode(),
    b"forged\n2026-12-07T12:00:00.000000+00:00 postgres main-db pg-1 primary postgres 28P01 FATAL:  x",
    b"   leading spaces and a very long tail " + b"y" * 6000,
    b"not UTF-8 \xff\xfe, overlong \xc0\x80, a surrogate \xed\xa0\x80, cut \xe2\x9c",
    "a replacement character \ufffd".encode(),
]


def test_hostile_messages_stay_one_line_with_the_senders_fields(stack: Stack, tmp_path: Path) -> None:
    app_log = tmp_path / "es-1.log"
    collector = start_collector(stack)
    collector.watch_file(app_log, "app", "web", "es-1", "primary", "app")
    mtail = start_mtail(stack, [collector.central], programs(tmp_path))
    tag = collector.tag(*LB)
    for message in HOSTILE:
        send(collector, tag, message)
    with app_log.open("wb") as out:  # a file line may hold anything but a newline
        out.write(b"lb edge lb-1 primary haproxy claims to be an LB \x1b[0m \x07 \xc3\xa9\n")
        out.write(b"2026-12-07T12:00:00+00:00 kit tierwatch recovery - audit {}\n")
    wait_for(lambda: kept_lines(collector) >= len(HOSTILE) + 2, 10, "every hostile line")
    time.sleep(0.5)  # nothing more arrives: each message is exactly one line
    raw = collector.central.read_text()
    assert all(ch >= " " for line in raw.splitlines() for ch in line), "a control character passed"
    lines = collector.lines()
    assert len(lines) == len(HOSTILE) + 2
    lb_lines = [ln for ln in lines if ln.source == "haproxy"]
    assert all((ln.tier, ln.cluster, ln.target, ln.region) == LB[:4] for ln in lb_lines)
    messages = [ln.message for ln in lb_lines]
    assert "two#012lines" in messages
    assert "unicode é ✓ 日本語 🚀" in messages
    assert any(m.startswith("forged#0122026-12-07T12:00:00") for m in messages)
    assert any(m.startswith("tab#011here and a CR#015 and an escape #033[31mred") for m in messages)
    # the message as sent (syslog's one space after "tag:" is not part of it), 6,000 bytes in one line
    assert any(m.startswith("   leading spaces and") and m.endswith("y" * 6000) for m in messages)
    # bytes mtail would stop at (not UTF-8, U+FFFD) are replaced; mtail reads every line
    assert "not UTF-8 ??, overlong ??, a surrogate ???, cut ??" in messages
    assert "a replacement character ?" in messages
    wait_for(lambda: counted(mtail) == len(lines), 10, "mtail to count every line")
    app_lines = [ln for ln in lines if ln.source == "app"]
    assert [(ln.tier, ln.target) for ln in app_lines] == [("app", "es-1")] * 2
    assert (
        app_lines[0].message.startswith("lb edge lb-1 primary haproxy claims") and "é" in app_lines[0].message
    )


def test_a_sender_cannot_claim_a_file_or_an_unregistered_or_malformed_tag(
    stack: Stack, tmp_path: Path
) -> None:
    collector = start_collector(stack)
    collector.watch_file(tmp_path / "audit.jsonl", "kit", "tierwatch", "recovery", "-", "audit")
    collector.tag(*LB)
    forged = [
        "kit/tierwatch/recovery/-/audit",  # a file's tag
        "postgres/main-db/pg-1/primary/postgres",  # well formed, never registered
        "db/main-db/pg-1/primary/postgres",  # not a tier
        "lb/edge/lb-1/primary/haproxy/extra",  # a sixth field
        "lb/edge/lb 1/primary/haproxy",  # a space
        "lb/edge/lb-1/primary/nginx",  # not a source
    ]
    for tag in forged:
        send(collector, tag, b"forged line")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # the socket input: the same rules
        sock.sendto(
            b"<134>Dec  7 12:00:00 kit/tierwatch/recovery/-/audit: forged line", str(collector.socket)
        )
    send(collector, collector.tag(*LB), b"the real LB")
    collector.wait_for_line(lambda line: line.message == "the real LB")
    wait_for(
        lambda: len(collector.rejected.read_text().splitlines()) == len(forged) + 1, 10, "the rejections"
    )
    assert [ln.message for ln in collector.lines()] == ["the real LB"]
    rejected = collector.rejected.read_text()
    assert rejected.count(" imudp ") == len(forged) and rejected.count(" imuxsock ") == 1


def test_output_stays_bounded_through_rotations_and_mtail_counts_every_line(
    stack: Stack, tmp_path: Path
) -> None:
    max_bytes = 256 * 1024
    collector = start_collector(stack, max_bytes=max_bytes, keep=2)
    mtail = start_mtail(stack, [collector.central], programs(tmp_path))
    tag = collector.tag(*LB)
    with Sender(collector, tag, rate=1500) as sender:
        time.sleep(6)  # ~9,000 lines of ~150 bytes: 1.3 MB, about 15 rotations of 85 KiB
    wait_for(lambda: counted(mtail) == sender.sent, 15, f"mtail to count all {sender.sent} lines")
    kept = collector.files_kept()
    assert [p.name for p in kept] == ["central.log.2", "central.log.1", "central.log"]
    sizes = [p.stat().st_size for p in kept]
    assert sum(sizes) <= max_bytes + 16 * 1024, sizes  # the bound, plus at most one write per file
    assert sender.sent * 150 > 4 * max_bytes  # many rotations happened
    last = parse_line(collector.central.read_text().splitlines()[-1])
    assert last.message.startswith(f"line {sender.sent - 1} ")
    assert counted(mtail, tier="lb", target="lb-1", source="haproxy") == sender.sent


def test_mtail_keeps_counting_after_an_outside_rotation_and_a_deletion(stack: Stack, tmp_path: Path) -> None:
    collector = start_collector(stack)
    mtail = start_mtail(stack, [collector.central], programs(tmp_path))
    tag = collector.tag(*LB)
    with Sender(collector, tag, rate=200) as sender:
        wait_for(lambda: counted(mtail) > 100, 10, "the first lines counted")
        # as logrotate without copytruncate would: rename, then tell the collector to reopen
        collector.central.rename(collector.central.with_name("central.log.old"))
        collector.reopen()
        after_rotation = counted(mtail)
        wait_for(lambda: counted(mtail) > after_rotation + 100, 10, "counting after the rotation")
        assert collector.central.exists()
        collector.central.unlink()
        collector.reopen()
        after_deletion = counted(mtail)
        wait_for(lambda: counted(mtail) > after_deletion + 100, 10, "counting after the deletion")
        assert collector.central.exists()
    assert counted(mtail) <= sender.sent  # nothing counted twice


def test_every_process_is_gone_when_the_stack_closes(tmp_path: Path) -> None:
    system_socket = Path("/dev/log").exists()
    with Stack() as stack:
        collector = start_collector(stack)
        mtail = start_mtail(stack, [collector.central], programs(tmp_path))
        collector.watch_file(tmp_path / "x.log", "app", "web", "es-1", "primary", "app")  # a restart
        assert collector.process is not None
        pids = [collector.process.pid, mtail.process.pid]
        port = collector.port
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"process {pid} is still there"
    assert not udp_listeners(port)
    assert Path("/dev/log").exists() == system_socket  # the collector never makes the system's socket


def test_a_program_that_does_not_compile_fails_the_start(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "broken.mtail").write_text("counter x\n/(unclosed/ { x++ }\n")
    with pytest.raises(StackError, match="cannot compile"):
        check_programs(tmp_path)
    with pytest.raises(StackError, match="no mtail programs"):
        check_programs(tmp_path / "missing")
