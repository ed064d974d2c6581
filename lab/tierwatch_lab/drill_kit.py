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
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
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

    def add(self, at: float | None, what: str) -> None:
        if at is not None:
            self.timeline.append((at, what))

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
