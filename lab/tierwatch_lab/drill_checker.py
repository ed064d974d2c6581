"""The fault drills' checker, independent of the kit (drills_faults.py, drills_partition.py,
drills_region.py):

- writers through the write LB and directly against the old primary (a client that still believes
  in it) record every write *acknowledged* (Redis ``SET`` + ``WAIT 1``; PostgreSQL a commit that
  returned without the "canceling wait for synchronous replication" warning) and every write the
  server took without acknowledging it;
- a prober per server tries an acknowledged write every PROBE_GAP seconds: the time during which
  two servers acknowledged writes (within PROBE_WINDOW of each other) is the double-primary time;
- at the end, on the one primary left: acknowledged writes missing (must be 0) and unacknowledged
  writes lost (counted apart: the returning server's divergent writes are dropped by design).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from .demo_stack import DemoStack
from .drill_kit import DrillResult, app_pg_connection, app_redis_client

PROBE_GAP = 0.1  # seconds between a prober's writes
PROBE_WINDOW = 0.25  # a server "accepts writes" for this long after an acknowledged probe write
PG_WRITE_TIMEOUT = 1.0  # seconds a PostgreSQL write may take before its socket is shut


# --- writers -----------------------------------------------------------------------------------


class RedisAckWrites:
    """SET then WAIT 1 on one address: True once a replica has it; ``unacked`` the SETs it took
    without a replica confirming."""

    def __init__(self, port: int, password: str, prefix: str):
        self.port, self.password, self.prefix = port, password, prefix
        self.client: redis.Redis | None = None
        self.unacked: list[str] = []
        self.unacked_at: list[float] = []  # when each of ``unacked`` was taken

    def __call__(self, n: int) -> bool:
        if self.client is None:
            self.client = app_redis_client(self.port, self.password)
        key = f"{self.prefix}:{n}"
        try:
            self.client.set(key, n)
        except redis.RedisError as exc:  # refused (NOREPLICAS, READONLY) or unreachable: nothing taken
            self._refused(exc)
            self._reset()
            return False
        try:
            if int(self.client.execute_command("WAIT", 1, 250)) >= 1:
                return True
        except redis.RedisError:
            self._reset()
        self.unacked.append(key)
        self.unacked_at.append(time.time())
        return False

    def _refused(self, exc: redis.RedisError) -> None:
        """Called when the SET failed (a subclass may note why)."""

    def _reset(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


class PgAckWrites:
    """INSERT (autocommit) on one address. Acknowledged when the commit returns without the warning
    that the synchronous wait was cancelled (the commit is then only local). A commit that does not
    return within PG_WRITE_TIMEOUT (a paused or fenced primary) has its socket shut: unacknowledged."""

    def __init__(self, port: int, password: str, table: str):
        self.port, self.password, self.table = port, password, table
        self.conn: psycopg.Connection[Any] | None = None
        self.notices: list[str] = []
        self.unacked: list[int] = []
        self.unacked_at: list[float] = []  # when each of ``unacked`` was taken

    def __call__(self, n: int) -> bool:
        try:
            if self.conn is None:
                self.conn = app_pg_connection(self.port, self.password)
                self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
        except psycopg.Error:
            return False
        self.notices.clear()
        query = f"INSERT INTO {self.table} (id) VALUES (%s)"
        done = with_deadline(self.conn, lambda conn: conn.execute(query, (n,)), PG_WRITE_TIMEOUT)
        if done and not any("synchronous replication" in m for m in self.notices):
            return True
        if not done:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        self.unacked.append(n)  # maybe committed locally: lost only if absent at the end
        self.unacked_at.append(time.time())
        return False


def with_deadline(
    conn: psycopg.Connection[Any], call: Callable[[psycopg.Connection[Any]], Any], timeout: float
) -> bool:
    """Run ``call(conn)``; after ``timeout`` send a cancel request (from a thread of its own: a paused
    server answers it only once resumed) and shut the connection's socket. The cancel frees the server
    backend (one waiting for a synchronous standby would otherwise hold its connection slot for good).
    True if it returned without error."""

    def shut() -> None:
        threading.Thread(target=_cancel, args=(conn,), daemon=True).start()
        # psycopg.Error: the connection was lost meanwhile (no socket left to shut)
        with contextlib.suppress(OSError, psycopg.Error):
            dup = socket.socket(fileno=os.dup(conn.fileno()))
            with dup:
                dup.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, shut)
    timer.start()
    try:
        call(conn)
        return True
    except (psycopg.Error, OSError):
        return False
    finally:
        timer.cancel()


def _cancel(conn: psycopg.Connection[Any]) -> None:
    """libpq's non-blocking cancel (its waits release the GIL; the blocking PQcancel would hold it
    until a paused server answers, freezing every thread of the drill)."""
    with contextlib.suppress(Exception):
        conn.cancel_safe(timeout=60)


# --- the double-primary checker -----------------------------------------------------------------


class Prober(threading.Thread):
    """Tries an acknowledged write on one server every PROBE_GAP; remembers when one succeeded."""

    def __init__(self, name: str, attempt: Callable[[int], bool]):
        super().__init__(daemon=True)
        self.server, self.attempt = name, attempt
        self.acked_at: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            with contextlib.suppress(Exception):
                if self.attempt(n):
                    self.acked_at.append(time.time())
            self._halt.wait(PROBE_GAP)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def double_primary_seconds(probers: list[Prober], start: float, end: float) -> float:
    """Time in [start, end] during which at least two servers acknowledged a write within PROBE_WINDOW."""
    step = 0.05
    total = 0.0
    marks = [sorted(p.acked_at) for p in probers]
    t = start
    while t < end:
        if _accepting(marks, t) >= 2:
            total += step
        t += step
    return round(total, 2)


def _accepting(marks: list[list[float]], t: float) -> int:
    """How many servers accept writes at ``t``: one of their acknowledgements (``marks``, sorted per
    server) lies in [t - PROBE_WINDOW, t]."""
    return sum(1 for times in marks if bisect_right(times, t) > bisect_left(times, t - PROBE_WINDOW))


def accepting_over_time(probers: list[Prober]) -> list[tuple[float, int]]:
    """(time, servers accepting writes) every PROBE_GAP over the probers' acknowledgements, for the
    drill's report: two or more is the double-primary time."""
    marks = [sorted(p.acked_at) for p in probers]
    times = [t for found in marks for t in found]
    if not times:
        return []
    start, steps = min(times), int((max(times) - min(times)) / PROBE_GAP) + 1
    return [(start + i * PROBE_GAP, _accepting(marks, start + i * PROBE_GAP)) for i in range(steps)]


@dataclass
class FaultCheck:
    """What the independent checker found for one engine."""

    acked: int = 0
    acked_lost: int = 0
    unacked_lost: int = 0
    double_primary_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


Attempt = Callable[[int], bool]


def _as_is(name: str, attempt: Attempt) -> Attempt:
    return attempt


def redis_probers(demo: DemoStack, wrap: Callable[[str, Attempt], Attempt] = _as_is) -> list[Prober]:
    """A prober per Redis server of ``demo`` (``wrap(name, attempt)``: how the attempt is run)."""
    return [
        Prober(n, wrap(n, RedisAckWrites(s.port, demo.redis_password, f"drill:probe:{n}")))
        for n, s in demo.redis.items()
    ]


def pg_probers(demo: DemoStack, wrap: Callable[[str, Attempt], Attempt] = _as_is) -> list[Prober]:
    """A prober per PostgreSQL server of ``demo``, writing table drill_probe (see ``drill_tables``)."""
    return [
        Prober(n, wrap(n, _PgProbe(PgAckWrites(s.port, demo.pg_app_password, "drill_probe"), i)))
        for i, (n, s) in enumerate(demo.pg.items())
    ]


def double_primary_checks(
    probers: dict[str, list[Prober]], start: float, end: float
) -> dict[str, FaultCheck]:
    """A FaultCheck per engine of ``probers`` with its double-primary time in [start, end]."""
    return {
        engine: FaultCheck(double_primary_s=double_primary_seconds(group, start, end))
        for engine, group in probers.items()
    }


def drill_tables(server: Any, tables: Sequence[str]) -> None:
    """Create ``tables`` (id bigint) on the PostgreSQL ``server`` if missing; the app role may write them."""
    for table in tables:
        server.sql(f"CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY)")
        server.sql(f"GRANT INSERT, SELECT ON {table} TO app")


def present(client: redis.Redis, keys: list[str]) -> int:
    """How many of ``keys`` exist on the Redis server of ``client``."""
    return sum(int(client.exists(*keys[i : i + 500])) for i in range(0, len(keys), 500))


def in_recovery(server: Any) -> bool | None:
    """Whether the PostgreSQL ``server`` is in recovery (a replica); None if it does not answer."""
    try:
        return bool(server.in_recovery())
    except Exception:  # noqa: BLE001 - a server may be down during a drill
        return None


class _PgProbe:
    """Probe writes with ids unique per server (offset by its index)."""

    def __init__(self, writes: PgAckWrites, index: int):
        self.writes, self.offset = writes, (index + 1) * 10_000_000

    def __call__(self, n: int) -> bool:
        return self.writes(self.offset + n)


# --- the result -------------------------------------------------------------------------------------


def apply_checks(result: DrillResult, checks: dict[str, FaultCheck]) -> DrillResult:
    """Put the checker's figures into ``result`` (acknowledged writes, lost, ``faults`` per engine, a
    detail line); a double primary makes it not recovered."""
    result.acked = sum(c.acked for c in checks.values())
    result.lost = sum(c.acked_lost for c in checks.values())
    result.faults = {name: vars(c) for name, c in checks.items()}
    result.detail = "; ".join(
        f"{name}: double-primary {c.double_primary_s:g}s, unacknowledged writes lost {c.unacked_lost}"
        for name, c in checks.items()
    )
    if any(c.double_primary_s > 0 for c in checks.values()):
        result.recovered = False
    return result
