"""What every drill is made of: writers that record acknowledged writes, the result and its timeline,
and the looks at the demo stack the drills share (who is primary, what the chain saw, waiting).

A drill breaks a fresh demo stack (demo_build.build), runs a writer that records every acknowledged
write, causes the failure, waits until the stack has recovered by itself, and builds a timeline —
failure, detection (the exporter's target_down), alert delivered (the recovery service's inbox),
action started and finished, recovered — plus the acknowledged writes lost and the number of
primaries left.

Acknowledged means durable on more than one server: a Redis write counts once ``WAIT 1`` confirms a
replica has it; a PostgreSQL write once its commit returns (the demo's primary commits synchronously
to ANY 1 of its replicas).

For the drill's report (drill_report.py) a result also keeps its series (``DrillResult.keep_series``):
the writers' acknowledgement times per engine and, from a :class:`PrimarySampler`, how many servers
of each engine reported the primary role over time.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .demo_stack import DemoStack
from .drill_catalog import SCENARIOS
from .stack import StackError, wait_for
from .stack.chain import audit
from .stack.tierwatch import TierwatchProcess

# one attempt is one try: a client that retried internally would count a write begun before the
# failure as one accepted after it
NO_RETRY = Retry(NoBackoff(), 0)


# --- writers ---------------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Writes continuously through a write address; remembers which writes were acknowledged and when."""

    def __init__(self, attempt: Callable[[int], bool], pause: float = 0.02):
        super().__init__(daemon=True)
        self.attempt = attempt
        self.pause = pause
        self.acked: list[tuple[int, float]] = []  # (write number, when its attempt started)
        self.failures = 0
        self.failed: list[float] = []  # when each failed attempt started
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.is_set():
            n += 1
            started = time.time()
            try:
                ok = self.attempt(n)
            except Exception:  # noqa: BLE001 - every failed write is data for the drill
                ok = False
            if ok:
                self.acked.append((n, started))
            else:
                self.failures += 1
                self.failed.append(started)
                time.sleep(0.05)
            time.sleep(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def first_ack_after(self, moment: float) -> float | None:
        """Start time of the first acknowledged write attempted after the outage that followed
        ``moment`` (its first failed write), or after ``moment`` if no write failed. A dying primary
        may still acknowledge a write or two (PostgreSQL backends outlive a killed postmaster for a
        moment): that is not a recovery."""
        outage = next((at for at in self.failed if at > moment), moment)
        return next((at for _, at in self.acked if at > outage), None)


def app_redis_client(port: int, password: str) -> redis.Redis:
    """A client of a Redis write address that fails within 0.5 s and never retries by itself."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=NO_RETRY,
    )


Port = int | Callable[[], int | None]  # a write address, or how to find it (by name: demo_dns.SrvPort)


def _port(port: Port) -> int | None:
    return port() if callable(port) else port


class RedisWrites:
    """SET through the write address (or the server a name gives, looked up on each new
    connection), acknowledged once WAIT confirms a replica has it."""

    def __init__(self, port: Port, password: str, prefix: str = "drill"):
        self.port, self.password, self.prefix = port, password, prefix
        self.client: redis.Redis | None = None

    def keys(self, writer: Writer) -> list[str]:
        """The keys of ``writer``'s acknowledged writes."""
        return [f"{self.prefix}:{n}" for n, _ in writer.acked]

    def __call__(self, n: int) -> bool:
        if self.client is None:
            port = _port(self.port)
            if port is None:
                return False
            self.client = app_redis_client(port, self.password)
        try:
            self.client.set(f"{self.prefix}:{n}", n)
            return int(self.client.execute_command("WAIT", 1, 250)) >= 1
        except redis.RedisError:
            self.client.close()
            self.client = None
            return False


def app_pg_connection(port: int, password: str) -> psycopg.Connection[Any]:
    """An autocommit connection of the demo's ``app`` user to a write address, failing within 1 s."""
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        dbname="postgres",
        user="app",
        password=password,
        connect_timeout=1,
        autocommit=True,
    )


class PgWrites:
    """INSERT through the write address (or the server a name gives, looked up on each new
    connection); acknowledged when the (synchronous) commit returns. Row ids are ``offset`` + n."""

    def __init__(self, port: Port, password: str, offset: int = 0):
        self.port, self.password, self.offset = port, password, offset
        self.conn: psycopg.Connection[Any] | None = None

    def ids(self, writer: Writer) -> set[int]:
        """The row ids of ``writer``'s acknowledged writes."""
        return {self.offset + n for n, _ in writer.acked}

    def __call__(self, n: int) -> bool:
        try:
            if self.conn is None:
                port = _port(self.port)
                if port is None:
                    return False
                self.conn = app_pg_connection(port, self.password)
                self.conn.execute("SET statement_timeout = 2000")
            self.conn.execute("INSERT INTO drill_writes (id) VALUES (%s)", (self.offset + n,))
            return True
        except psycopg.Error:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return False


class HttpRequests:
    """GET /work through the VIP; 'acknowledged' = a 2xx answer. Remembers who served it."""

    def __init__(self, url: str):
        self.url = url
        self.served: list[tuple[float, str, str]] = []

    def __call__(self, n: int) -> bool:
        try:
            response = httpx.get(self.url, timeout=1.0, headers={"Connection": "close"})
        except httpx.HTTPError:
            return False
        if response.status_code >= 300:
            return False
        self.served.append(
            (time.time(), response.headers.get("x-served-by", ""), response.headers.get("x-backend", ""))
        )
        return True


BINS_PER_SECOND = 10  # a report counts acknowledged writes per 100 ms (and the JSON carries those counts)
SAMPLE_BREAK = 3.0  # seconds between two samples of a series beyond which it was not sampled in between


def per_bin(times: Sequence[float], origin: float) -> tuple[int, list[int]]:
    """``times`` counted per 100 ms, the bins numbered from ``origin`` (bin 0 starts there): the number
    of the first bin holding one and the counts from it to the last such bin."""
    if not times:
        return 0, []
    # the epsilon keeps a time that is a whole number of bins after origin in its own bin despite rounding
    index = [math.floor((at - origin) * BINS_PER_SECOND + 1e-6) for at in times]
    first = min(index)
    counts = [0] * (max(index) - first + 1)
    for i in index:
        counts[i - first] += 1
    return first, counts


def sample_runs(samples: Sequence[tuple[float, int]]) -> list[tuple[float, float, int]]:
    """``samples`` (time, count) as runs (from, to, count): a run lasts until the next sample with
    another count, or ends at its last sample when none follows within SAMPLE_BREAK."""
    runs: list[tuple[float, float, int]] = []
    for at, count in sorted(samples):
        if runs and at - runs[-1][1] <= SAMPLE_BREAK:
            start, _, previous = runs[-1]
            if count == previous:
                runs[-1] = (start, at, count)
                continue
            runs[-1] = (start, at, previous)
        runs.append((at, at, count))
    return runs


@dataclass
class DrillResult:
    """What one drill saw."""

    scenario: str
    failed_at: float
    timeline: list[tuple[float, str]] = field(default_factory=list)
    acked: int = 0
    lost: int = 0
    primaries: dict[str, int] = field(default_factory=dict)
    recovered: bool = False
    detail: str = ""
    faults: dict[str, Any] = field(default_factory=dict)  # fault drills: their checker's figures
    # the report's series (keep_series), per engine (redis, postgres, http): when each acknowledged
    # write was attempted; (time, servers reporting the primary role) from a PrimarySampler; (time,
    # servers acknowledging the checker's probe writes) where the drill has probers
    writes: dict[str, list[float]] = field(default_factory=dict)
    primaries_seen: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    accepting: dict[str, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, at: float | None, what: str) -> None:
        """A timeline line. Its text's prefix says what it is, and a report draws the lines of
        drill_report.MARKERS as markers: ``failure:``, ``detected:``, ``alert:``, ``action: ...
        started``, ``action:`` (done), ``recovered...``/``... acknowledged again``, ``rejoined:``."""
        if at is not None:
            self.timeline.append((at, what))

    def keep_series(
        self,
        writers: dict[str, Sequence[Writer | None]],
        sampler: PrimarySampler | None = None,
        accepting: dict[str, list[tuple[float, int]]] | None = None,
    ) -> None:
        """Keep what the drill's report draws, added to what an earlier phase kept: the acknowledged
        writes of ``writers`` per engine, the primaries ``sampler`` saw (it is stopped here) and the
        servers acknowledging writes over time (drill_checker.accepting_over_time)."""
        for engine, group in writers.items():
            times = self.writes.setdefault(engine, [])
            times.extend(at for writer in group if writer is not None for _, at in writer.acked)
            times.sort()
        for engine, samples in (sampler.stop() if sampler else {}).items():
            self.primaries_seen.setdefault(engine, []).extend(samples)
        for engine, samples in (accepting or {}).items():
            self.accepting.setdefault(engine, []).extend(samples)

    def keep_series_of(self, other: DrillResult) -> None:
        """Add the series of ``other`` (a later phase of the same drill) to this result's."""
        for engine, times in other.writes.items():
            self.writes[engine] = sorted([*self.writes.get(engine, []), *times])
        for mine, theirs in ((self.primaries_seen, other.primaries_seen), (self.accepting, other.accepting)):
            for engine, samples in theirs.items():
                mine.setdefault(engine, []).extend(samples)

    def render(self) -> str:
        lines = [f"drill {self.scenario}: {SCENARIOS[self.scenario]}"]
        for at, what in sorted(self.timeline):
            lines.append(f"  {at - self.failed_at:+8.2f}s  {what}")
        lines.append(f"  acknowledged writes: {self.acked}, lost: {self.lost}")
        if self.primaries:
            lines.append("  primaries now: " + ", ".join(f"{k}={v}" for k, v in self.primaries.items()))
        lines.append(
            f"  result: {'RECOVERED' if self.recovered else 'NOT RECOVERED'}"
            + (f" ({self.detail})" if self.detail else "")
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON data; the series bounded by the drill's length: acknowledged writes per
        100 ms (``first_s``: the first bin's start, seconds from the failure) and runs of a count
        (``[from_s, to_s, count]``)."""
        series: dict[str, Any] = {}
        if self.writes:
            series["writes_per_100ms"] = {}
            for engine, times in self.writes.items():
                first, counts = per_bin(times, self.failed_at)
                series["writes_per_100ms"][engine] = {"first_s": first / BINS_PER_SECOND, "counts": counts}
        for key, samples in (("primaries_seen", self.primaries_seen), ("accepting", self.accepting)):
            if samples:
                series[key] = {
                    engine: [
                        [round(a - self.failed_at, 3), round(b - self.failed_at, 3), n]
                        for a, b, n in sample_runs(found)
                    ]
                    for engine, found in samples.items()
                }
        return {
            "scenario": self.scenario,
            "recovered": self.recovered,
            "acked": self.acked,
            "lost": self.lost,
            "primaries": self.primaries,
            "detail": self.detail,
            **({"faults": self.faults} if self.faults else {}),
            "timeline": [
                {"seconds": round(at - self.failed_at, 3), "event": what}
                for at, what in sorted(self.timeline)
            ],
            **series,
        }


# --- what the chain saw ------------------------------------------------------------------------------


def exporter_events(demo: DemoStack, exporter: TierwatchProcess | None = None) -> list[dict[str, Any]]:
    """The JSON log events of ``exporter`` (default: the chain's first exporter)."""
    assert demo.chain is not None
    log = (exporter or demo.chain.exporter).process.log_path
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def chain_timeline(demo: DemoStack, result: DrillResult, targets: set[str], alerts: set[str]) -> None:
    """Detection, delivery, action and outcome times from the exporter's log and the audit trail
    (waits up to 60 s for the action's outcome, which comes after its verification)."""
    assert demo.chain is not None
    after = result.failed_at
    chain = demo.chain
    wait_until(
        lambda: any(
            e["event"] == "outcome" and e.get("alert") in alerts and e["ts"] >= after for e in audit(chain)
        ),
        time.time() + 60,
    )
    for event in exporter_events(demo):
        if event.get("event") == "target_down" and event.get("target") in targets and event["ts"] >= after:
            result.add(event["ts"], f"detected: exporter saw {event['target']} down ({event.get('reason')})")
            targets = targets - {event["target"]}
    seen: set[str] = set()
    for entry in audit(demo.chain):
        if entry["ts"] < after:
            continue
        kind, alert = entry["event"], entry.get("alert", "")
        if kind == "alert_accepted" and alert in alerts and ("accepted", alert) not in seen:
            seen.add(("accepted", alert))  # type: ignore[arg-type]
            result.add(entry["ts"], f"alert: {alert} delivered to the recovery service")
        elif kind == "action_started" and alert in alerts:
            result.add(
                entry["ts"],
                f"action: {entry.get('action')} started for {entry.get('target') or entry.get('cluster')}",
            )
        elif kind == "outcome" and alert in alerts:
            result.add(
                entry["ts"], f"action: {entry.get('action')} {entry.get('outcome')} — {entry.get('detail')}"
            )
        elif kind in ("dns_updated", "dns_update_failed") and alert in alerts:
            result.add(entry["ts"], dns_line(entry))


def dns_line(entry: dict[str, Any]) -> str:
    """A timeline line for the recovery service's DNS step (an audit record)."""
    if entry["event"] == "dns_updated":
        tries = f", {entry.get('attempts')} attempts" if entry.get("attempts", 1) > 1 else ""
        return (
            f"dns: {entry.get('record')} now {entry.get('value')} ({entry.get('seconds')}s{tries}, read back)"
        )
    return f"dns: {entry.get('record')} not moved ({entry.get('result')}: {entry.get('error')})"


# --- who is primary --------------------------------------------------------------------------------


def redis_role(server: Any) -> str | None:
    """The replication role a Redis server reports (``master``, ``slave``), None if it does not answer."""
    try:
        return str(server.client(socket_timeout=1).info("replication")["role"])
    except redis.RedisError:
        return None


def redis_masters(demo: DemoStack) -> list[str]:
    """The demo's Redis servers that report themselves master."""
    return [name for name, server in demo.redis.items() if redis_role(server) == "master"]


def pg_primaries(demo: DemoStack) -> list[str]:
    """The demo's PostgreSQL servers that answer and are not in recovery."""
    primaries = []
    for name, server in demo.pg.items():
        try:
            if not server.in_recovery():
                primaries.append(name)
        except (psycopg.Error, OSError, StackError):
            continue
    return primaries


SLOW_LOOK = 1.0  # seconds: a look that took longer saw a server not answering until its answer came


class _RedisRole:
    """Whether one Redis server reports the master role, over a client of its own: one connection, kept
    (redis_masters opens one per call, which a look every 250 ms must not), failing within 1 s."""

    def __init__(self, server: Any):
        self.client = redis.Redis(
            host=server.host,
            port=server.port,
            username=server.username,
            password=server.password,
            decode_responses=True,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=NO_RETRY,
        )

    def __call__(self) -> bool:
        return str(self.client.info("replication")["role"]) == "master"

    def close(self) -> None:
        self.client.close()


class _PgRole:
    """Whether one PostgreSQL server is out of recovery, over one superuser connection, kept; a paused
    server holds the look until it wakes (SLOW_LOOK counts it out meanwhile)."""

    def __init__(self, server: Any):
        self.server = server
        self.conn: psycopg.Connection[Any] | None = None

    def __call__(self) -> bool:
        try:
            if self.conn is None:
                self.conn = self.server.connect(timeout=2)
            row = self.conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and not row[0]
        except psycopg.Error:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None


class _RoleLook(threading.Thread):
    """Asks one server whether it is the primary every ``every`` seconds; remembers (when, answer)."""

    def __init__(self, engine: str, look: _RedisRole | _PgRole, every: float):
        super().__init__(daemon=True)
        self.engine, self.look, self.every = engine, look, every
        self.seen: list[tuple[float, bool]] = []
        self.asking: float | None = None  # when the look under way began
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                start = self.asking = time.time()
                try:
                    primary = self.look()
                except Exception:  # noqa: BLE001 - a server that does not answer is no primary
                    primary = False
                end, self.asking = time.time(), None
                if end - start > SLOW_LOOK:  # paused or cut off: no primary until it answered
                    self.seen += [(start, False), (end, primary)]
                else:
                    self.seen.append((start, primary))
                self.halt.wait(self.every)
        finally:
            self.look.close()


class PrimarySampler:
    """How many servers of each engine report the primary role over time, for the drill's report:
    a thread per server asks it every ``every`` seconds (a paused server's slow answer delays only
    its own looks) until ``stop``. The stack's close stops it too, should the drill raise first."""

    def __init__(self, demo: DemoStack, engines: Sequence[str] = ("redis", "postgres"), every: float = 0.25):
        looks: list[tuple[str, _RedisRole | _PgRole]] = []
        if "redis" in engines:
            looks += [("redis", _RedisRole(server)) for server in demo.redis.values()]
        if "postgres" in engines:
            looks += [("postgres", _PgRole(server)) for server in demo.pg.values()]
        self._looks = [_RoleLook(engine, look, every) for engine, look in looks]
        self._stopped: float | None = None
        demo.stack.on_close(self.stop)
        for look in self._looks:
            look.start()

    def stop(self) -> dict[str, list[tuple[float, int]]]:
        """Stop looking (again: a no-op); per engine (time, servers reporting the primary role) until now."""
        self._stopped = self._stopped or time.time()
        for look in self._looks:
            look.halt.set()
        for look in self._looks:
            look.join(10)
        return self.samples()

    def samples(self) -> dict[str, list[tuple[float, int]]]:
        """Per engine a sample at each look at one of its servers, from when every one had been
        looked at until ``stop``: (time, how many reported the primary role at their latest look)."""
        until = self._stopped or time.time()
        found: dict[str, list[tuple[float, int]]] = {}
        for engine in dict.fromkeys(look.engine for look in self._looks):
            group = [self._seen(look, until) for look in self._looks if look.engine == engine]
            if not all(group):
                continue
            start = max(seen[0][0] for seen in group)
            latest: dict[int, bool] = {}
            samples = found.setdefault(engine, [])
            for at, index, primary in sorted((at, i, p) for i, seen in enumerate(group) for at, p in seen):
                latest[index] = primary
                if at >= start and len(latest) == len(group):
                    samples.append((at, sum(latest.values())))
        return found

    @staticmethod
    def _seen(look: _RoleLook, until: float) -> list[tuple[float, bool]]:
        seen = [s for s in look.seen if s[0] <= until]
        asking = look.asking
        if asking is not None and until - asking > SLOW_LOOK:  # still waiting for a paused server
            seen.append((asking, False))
        return seen


# --- waiting ---------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll ``condition`` every 50 ms until it holds (True) or ``deadline`` (time.time()) passes
    (False); an exception raised by it counts as not yet."""
    while time.time() < deadline:
        try:
            if condition():
                return True
        except Exception:  # noqa: BLE001 - servers come and go during a drill
            pass
        time.sleep(0.05)
    return False


def wait_until_watched(demo: DemoStack, timeout: float = 60) -> None:
    """Until Prometheus has every target up and no alert of the drills firing (a clean start)."""
    assert demo.chain is not None
    prometheus = demo.chain.prometheus
    wait_for(prometheus.targets_up, timeout, "Prometheus scraping the chain")
    wait_for(lambda: prometheus.value("min(tierwatch_up)") == 1, timeout, "every target up in Prometheus")
