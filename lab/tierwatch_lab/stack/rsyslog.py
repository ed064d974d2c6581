"""The lab's central log collector: Debian's rsyslogd with a config of its own, writing one file.

Every component's log lines end up in ``central.log`` in the collector's directory, one line each::

    <RFC3339 time> <tier> <cluster> <target> <region> <source> <message>

The first six fields never contain a space: they come from a tag ``tier/cluster/target/region/source``
(``LogSource.tag``), never from the message. Syslog senders (HAProxy's ``log`` directive) put the tag
in their messages: the UDP input on 127.0.0.1 (``address``), or a unix datagram socket (``socket``) for
senders in a network namespace of their own. Files are read with imfile, their tag set here
(``watch_file``). The time is the collector's clock on reception, so no sender can set it.

What a sender can claim: every tag is a ``LogSource`` (the fixed tiers and sources, names of letters,
digits, ``.``, ``_`` and ``-``) registered here; a syslog sender's tag (up to ``[pid]`` or ``:``) must be
one registered for syslog (``tag``), and a file's tag belongs to that file alone, so nothing that can
reach the UDP port or the socket can write lines as PostgreSQL, Redis, an app, the exporter, the
recovery service or the audit trail, nor make up a tier, a source or a name with a space. Any other line
goes to ``rejected.log`` with its input and raw tag. UDP syslog has no sender authentication: a local
process may still claim a registered syslog tag (an LB's); in production use per-sender inputs
(RELP/TLS with client certificates, or journald's trusted fields). The message may contain anything:
control characters are escaped (``#012`` for a newline, ``#011`` for a tab), so it can neither end a
line nor shift a field; bytes that are not UTF-8 and U+FFFD become ``?`` (mtail 3.0.0~rc50 stops
reading a file for good at either: google/mtail#698), other UTF-8 text stays as it is.

PostgreSQL and Redis cannot send syslog anywhere but ``/dev/log`` (syslog(3) has the path compiled
in), which the lab must not use, so their stderr/stdout files are read instead (``PG_REPORT_START``
joins a PostgreSQL report's DETAIL/HINT/STATEMENT lines onto its first line, as
``syslog_split_messages=off`` would; Redis' ``pid:role date level`` prefix is removed).

Bounded: ``central.log`` is rotated by size (``rotation.sizeLimit``) by ``rotate.sh``, which keeps
``keep`` older copies, so at most ``max_bytes`` (plus one write) are kept; the in-memory queue holds at
most ``queue_size`` messages: past 90 % of it syslog lines of severity info and debug (HAProxy's request
lines) are dropped, when full any syslog line (a file's reader waits instead: the file keeps its lines),
so a flood drops lines instead of growing memory (bench/log_flood.py). Rotation hard-links the old
file away and renames a fresh one over the name, so the name never goes missing (mtail, which reads
it, re-finds a vanished file only from its end, and reads a file it finds at its start from its end:
start mtail before the components log).

Inputs are read when rsyslogd starts: a registration after ``start`` restarts it (imfile keeps each
file's position across the restart; UDP lines sent during the ~50 ms restart are lost). Register in a
``batch`` to restart once.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

HOST = "127.0.0.1"
TIERS = ("lb", "app", "redis", "postgres", "kit")
SOURCES = ("haproxy", "postgres", "redis", "app", "exporter", "recovery", "audit")
NAME = re.compile(r"[A-Za-z0-9._-]+\Z")
# the first line of a PostgreSQL report with log_line_prefix '%e ' (LOG_SETTINGS of stack/postgres.py);
# DETAIL, HINT, CONTEXT, STATEMENT lines and tab-indented continuations join it
PG_REPORT_START = r"^[0-9A-Z]{5} (LOG|ERROR|FATAL|PANIC|WARNING|NOTICE|INFO|DEBUG[1-5]):  "
# what Redis writes before its own text in a log file: "pid:role dd Mon yyyy hh:mm:ss.mmm level "
REDIS_PREFIX = r"^[0-9]+:[A-Z] [0-9]+ [A-Z][a-z]+ [0-9]+ [0-9:.]+ [-.*#] "
MIB = 1024 * 1024
SIDE_FILE_BYTES = MIB  # rejected.log and the collector's own messages: each kept to this (x2)
LINE = re.compile(r"(\S+) (\S+) (\S+) (\S+) (\S+) (\S+) ?(.*)\Z")


@dataclass(frozen=True)
class LogSource:
    """Who a line is from: the kit's labels plus the kind of log (``source``)."""

    tier: str
    cluster: str
    target: str
    region: str
    source: str

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tier {self.tier!r}: one of {', '.join(TIERS)}")
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r}: one of {', '.join(SOURCES)}")
        for name in (self.cluster, self.target, self.region):
            if not NAME.match(name):
                raise ValueError(f"{name!r}: use letters, digits, '.', '_' and '-'")

    @property
    def tag(self) -> str:
        """``tier/cluster/target/region/source``: the syslog tag that carries it."""
        return f"{self.tier}/{self.cluster}/{self.target}/{self.region}/{self.source}"


@dataclass(frozen=True)
class SyslogTarget:
    """Where a syslog sender logs: an address (``host:port`` for UDP, or a unix socket path) and its tag."""

    address: str
    tag: str


@dataclass(frozen=True)
class WatchedFile:
    """A file the collector reads (imfile); ``start_pattern``: the first line of a multi-line message."""

    path: Path
    source: LogSource
    start_pattern: str | None = None


@dataclass(frozen=True)
class CentralLine:
    """One line of central.log, split into its fields."""

    time: str
    tier: str
    cluster: str
    target: str
    region: str
    source: str
    message: str


def parse_line(line: str) -> CentralLine:
    """Split a central.log line (without its newline) into its seven fields."""
    match = LINE.match(line)
    if not match:
        raise ValueError(f"not a central.log line: {line!r}")
    return CentralLine(*match.groups())


@dataclass
class LogCollector:
    """A configured (and, after ``start``, running) rsyslogd: see the module's docstring."""

    stack: Stack
    directory: Path
    port: int
    max_bytes: int
    keep: int = 1
    queue_size: int = 10000
    stats_interval: int | None = None
    process: ManagedProcess | None = None
    files: list[WatchedFile] = field(default_factory=list)
    syslog_tags: set[str] = field(default_factory=set)
    _batching: int = 0
    _dirty: bool = False

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the UDP syslog input."""
        return (HOST, self.port)

    @property
    def central(self) -> Path:
        return self.directory / "central.log"

    @property
    def rejected(self) -> Path:
        """Lines whose tag did not parse or was not theirs to use."""
        return self.directory / "rejected.log"

    @property
    def socket(self) -> Path:
        """The unix datagram syslog input (for senders in a network namespace of their own)."""
        return self.directory / "syslog.sock"

    @property
    def stats_file(self) -> Path:
        """impstats' counters (JSON lines) every ``stats_interval`` seconds, when that is set."""
        return self.directory / "stats.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "rsyslog.conf"

    def tag(self, tier: str, cluster: str, target: str, region: str, source: str) -> str:
        """Register ``tier/cluster/target/region/source`` for syslog senders and return it."""
        tag = LogSource(tier, cluster, target, region, source).tag
        if tag not in self.syslog_tags:
            self.syslog_tags.add(tag)
            self._changed()
        return tag

    def syslog_target(
        self, tier: str, cluster: str, target: str, region: str, source: str, *, via: str = "udp"
    ) -> SyslogTarget:
        """A registered tag and where to send it: ``via`` ``udp`` (127.0.0.1:port) or ``socket`` (the
        unix datagram socket: reachable from a network namespace, as it is a file)."""
        if via not in ("udp", "socket"):
            raise ValueError(f"via {via!r}: udp or socket")
        address = f"{HOST}:{self.port}" if via == "udp" else str(self.socket)
        return SyslogTarget(address, self.tag(tier, cluster, target, region, source))

    def watch_file(
        self,
        path: Path,
        tier: str,
        cluster: str,
        target: str,
        region: str,
        source: str,
        *,
        start_pattern: str | None = None,
    ) -> None:
        """Read ``path`` (it may not exist yet) as lines of that source. PostgreSQL's files get
        ``PG_REPORT_START`` unless another ``start_pattern`` is given."""
        origin = LogSource(tier, cluster, target, region, source)
        if start_pattern is None and source == "postgres":
            start_pattern = PG_REPORT_START
        watched = WatchedFile(Path(path), origin, start_pattern)
        if any(f.path == watched.path for f in self.files):
            raise StackError(f"{path} is read already")
        self.files.append(watched)
        self._changed()

    @contextlib.contextmanager
    def batch(self) -> Iterator[LogCollector]:
        """Register several inputs with one restart (none before ``start``)."""
        self._batching += 1
        try:
            yield self
        finally:
            self._batching -= 1
            if not self._batching and self._dirty:
                self.restart()

    def _changed(self) -> None:
        self._dirty = self.process is not None
        if self._dirty and not self._batching:
            self.restart()

    def start(self, timeout: float = 10.0) -> LogCollector:
        """Write the config, check it (``rsyslogd -N1``) and start rsyslogd; ready when it returns."""
        self._write_config()
        self.central.touch()  # so a reader started next (mtail) finds it and reads it from its start
        check = subprocess.run(
            ["rsyslogd", "-N1", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check.returncode != 0:
            raise StackError(f"rsyslogd -N1 rejects {self.config_path}:\n{check.stdout}{check.stderr}")
        argv = ["rsyslogd", "-n", "-f", str(self.config_path), "-i", str(self.directory / "rsyslogd.pid")]
        if self.process is None:
            self.process = self.stack.spawn("rsyslogd", argv)
        else:
            self.process.argv = argv
            self.process.start()
        self._dirty = False
        wait_for(self._ready, timeout, f"rsyslogd on udp {HOST}:{self.port}")
        return self

    def restart(self) -> None:
        """Stop rsyslogd and start it with the current registrations."""
        if self.process is not None:
            self.process.stop()
        self.start()

    def _ready(self) -> bool:
        assert self.process is not None
        self.process.check_alive()
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(self.address)
            except OSError:
                return True  # bound: rsyslogd listens
        return False

    def reopen(self) -> None:
        """SIGHUP: rsyslogd closes its output files and reopens them by name on the next line (after a
        rotation or deletion by someone else)."""
        if self.process is not None:
            self.process.signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def files_kept(self) -> list[Path]:
        """central.log's rotated copies, oldest first, then central.log itself (those that exist)."""
        rotated = [self.central.with_name(f"{self.central.name}.{i}") for i in range(self.keep, 0, -1)]
        return [path for path in (*rotated, self.central) if path.exists()]

    def lines(self) -> list[CentralLine]:
        """Every line kept (rotated copies first), parsed."""
        found = []
        for path in self.files_kept():
            found += [parse_line(line) for line in path.read_text(errors="replace").splitlines()]
        return found

    def wait_for_line(
        self, match: Callable[[CentralLine], bool], timeout: float = 10.0, what: str = "a line"
    ) -> CentralLine:
        """The first kept line for which ``match`` is true, waiting up to ``timeout`` seconds for it."""

        def found() -> CentralLine | None:
            assert self.process is not None
            self.process.check_alive()
            return next((line for line in self.lines() if match(line)), None)

        return wait_for(found, timeout, f"{what} in {self.central}", interval=0.1)

    def _write_config(self) -> None:
        work = self.directory / "work"
        work.mkdir(exist_ok=True)
        rotate = self.directory / "rotate.sh"
        rotate.write_text(ROTATE_SCRIPT.format(keep=self.keep))
        rotate.chmod(0o755)
        self.config_path.write_text(render_config(self, work, rotate), encoding="utf-8")


ROTATE_SCRIPT = """#!/bin/sh
# rotation.sizeLimitCommand of the tierwatch lab's collector (stack/rsyslog.py): rsyslogd has closed
# "$1"; keep {keep} older copies. The name never goes missing: a hard link keeps the old file as .1, then a
# fresh file is renamed over the name (mtail re-finds a vanished file only from its end).
f="$1"
i={keep}
while [ "$i" -gt 1 ]; do
  j=$((i - 1))
  if [ -e "$f.$j" ]; then mv -f "$f.$j" "$f.$i"; fi
  i=$j
done
ln -f "$f" "$f.1" && : > "$f.new" && mv -f "$f.new" "$f"
"""


def _quote(value: str) -> str:
    """A RainerScript string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _output(path: Path, template: str, limit: int, rotate: Path) -> str:
    return (
        f'action(type="omfile" file={_quote(str(path))} template="{template}" '
        f'rotation.sizeLimit="{limit}" rotation.sizeLimitCommand={_quote(f"{rotate} {path}")})'
    )


def render_config(collector: LogCollector, work: Path, rotate: Path) -> str:
    """The rsyslogd config of ``collector`` (its own work directory, inputs and files; no system
    socket, no /etc/rsyslog.conf)."""
    size = max(collector.max_bytes // (collector.keep + 1), 4096)
    discard_mark = collector.queue_size * 9 // 10
    net_tags = sorted(collector.syslog_tags)
    allowed = f"$.tag == [{', '.join(_quote(t) for t in net_tags)}]" if net_tags else "0 == 1"
    lines = [
        "# written by tierwatch_lab.stack.rsyslog: the lab's central log collector",
        # the program name is the whole tag up to "[pid]" or ":", slashes included
        f'global(workDirectory={_quote(str(work))} maxMessageSize="8k" parser.permitSlashInProgramName="on")',
        'main_queue(queue.type="FixedArray" queue.size="1000")',
        'module(load="imudp" threads="1")',
        'module(load="imuxsock" SysSock.Use="off")',
        'module(load="mmutf8fix")',
        *(['module(load="imfile" mode="inotify")'] if collector.files else []),
        *(
            [
                f'module(load="impstats" interval="{collector.stats_interval}" format="json" '
                f'log.syslog="off" log.file={_quote(str(collector.stats_file))})'
            ]
            if collector.stats_interval
            else []
        ),
        'template(name="tw_line" type="list") {',
        '  property(name="timegenerated" dateFormat="rfc3339")',
        *(f'  constant(value=" ") property(name="$.{f}")' for f in ("tier", "cluster", "target", "region")),
        '  constant(value=" ") property(name="$.source")',
        '  constant(value=" ") property(name="$.msg" controlcharacters="escape")',
        '  constant(value="\\n")',
        "}",
        'template(name="tw_rejected" type="list") {',
        '  property(name="timegenerated" dateFormat="rfc3339") constant(value=" ")',
        '  property(name="inputname") constant(value=" ")',
        '  property(name="syslogtag" controlcharacters="escape") constant(value=" ")',
        '  property(name="msg" controlcharacters="escape") constant(value="\\n")',
        "}",
        # a bounded queue: past the discard mark info and debug lines are dropped, when full any line
        f'ruleset(name="tw_in" queue.type="FixedArray" queue.size="{collector.queue_size}"',
        f'        queue.discardMark="{discard_mark}" queue.discardSeverity="6"'
        ' queue.timeoutEnqueue="100") {',
        '  action(type="mmutf8fix" mode="utf-8" replacementChar="?")',  # see the U+FFFD below
        # a file's tag is this config's (LogSource, checked); a syslog sender's must be registered: no
        # regular expression needed, and nothing else can reach the fields
        "  set $.tag = $programname;",
        f'  if $inputname != "imfile" and not ({allowed}) then {{',
        f"    {_output(collector.rejected, 'tw_rejected', SIDE_FILE_BYTES, rotate)}",
        "    stop",
        "  }",
        *(
            f"  set $.{f} = field($.tag, 47, {i});"
            for i, f in enumerate(("tier", "cluster", "target", "region", "source"), start=1)
        ),
        '  if $inputname == "imfile" then {',
        "    set $.msg = $msg;",
        f'    if $.source == "redis" and re_match($msg, {_quote(REDIS_PREFIX)}) then',
        f"      set $.msg = re_extract($msg, {_quote(REDIS_PREFIX + '(.*)')}, 0, 1, $msg);",
        '  } else if substring($msg, 0, 1) == " " then {',
        "    set $.msg = substring($msg, 1, 1000000);",  # syslog's space after "tag:"
        "  } else {",
        "    set $.msg = $msg;",
        "  }",
        '  set $.msg = replace($.msg, "\\t", "#011");',
        # mtail 3.0.0~rc50 stops reading a file for good at a U+FFFD or a byte that is not UTF-8
        # (google/mtail#698): mmutf8fix replaced the invalid bytes, this the valid U+FFFD
        '  set $.msg = replace($.msg, "\ufffd", "?");',
        f"  {_output(collector.central, 'tw_line', size, rotate)}",
        "}",
        f'input(type="imudp" address="{HOST}" port="{collector.port}" ruleset="tw_in" rcvbufSize="1m")',
        f'input(type="imuxsock" Socket={_quote(str(collector.socket))} ruleset="tw_in")',
    ]
    for watched in collector.files:
        multi = (
            f' startmsg.regex={_quote(watched.start_pattern)} escapeLF.replacement="#012"'
            if watched.start_pattern
            else ""
        )
        lines.append(
            f'input(type="imfile" File={_quote(str(watched.path))} Tag={_quote(watched.source.tag)}'
            f' ruleset="tw_in" readTimeout="1"{multi})'
        )
    # rsyslogd's own messages (the default ruleset): a small file of their own
    own = collector.directory / "collector.log"
    lines.append(_output(own, "RSYSLOG_FileFormat", SIDE_FILE_BYTES, rotate))
    return "\n".join(lines) + "\n"


def start_collector(
    stack: Stack,
    *,
    max_bytes: int = 64 * MIB,
    keep: int = 1,
    queue_size: int = 10000,
    files: tuple[WatchedFile, ...] = (),
    stats_interval: int | None = None,
    name: str = "collector",
) -> LogCollector:
    """Start rsyslogd as the central collector in ``<stack>/<name>`` on a free UDP port of 127.0.0.1:
    central.log and its ``keep`` rotated copies stay within ``max_bytes``; ``files`` are read from
    the start (more with ``watch_file``); ``stats_interval``: rsyslogd's own counters (received, written,
    dropped) into ``stats_file`` that often."""
    if keep < 1:
        raise ValueError("keep: at least 1 rotated copy")
    directory = stack.directory(name)
    os.chmod(directory, 0o755)
    collector = LogCollector(
        stack, directory, free_port(), max_bytes, keep, queue_size, stats_interval, files=list(files)
    )
    return collector.start()
