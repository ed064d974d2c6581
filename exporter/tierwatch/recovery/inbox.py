"""The durable inbox: every firing alert is recorded (SQLite, fsynced) before the webhook answers 2xx,
once per alert (fingerprint + startsAt) whoever sends it and however often. Actions run from here, so
a crash or restart loses nothing and repeats nothing.

Alerts that differ only by replica labels (an HA Prometheus pair sends each alert twice) are one
incident: while one of them is waiting or running, or its action ran and ended after the other started
firing (the pair's second copy often comes one group_interval later), the others are recorded as
duplicates of it. A copy of an alert that was refused (allow-list, limits, live state) goes through the
same checks again.

Runs (for the rate limit and the cooldown) are reserved atomically with the check of both limits and
kept only once the action passes its point of no return; an attempt that ends before it (refused,
cancelled, interrupted by a crash or a shutdown) gives its reservation back.

Windows are measured on a clock that does not step (clocks.py): a run records the boot it started in
and the time since that boot as well as the wall time, so an NTP step or a corrected clock neither
lets an action run twice inside its cooldown nor blocks the next one for hours.

The last failover of each cluster (what the rejoin actions follow) is kept here too, not read back
from the audit log, which an operator may rotate or delete.

A write that fails (a full disk) rolls back and raises InboxUnavailable: the caller answers 503 or
leaves the alert for later; nothing is half recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .clocks import Clock, SystemClock
from .webhook import WebhookAlert, WebhookPayload

SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    key TEXT PRIMARY KEY,
    alertname TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    labels TEXT NOT NULL,
    received_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'pending',
    resolved INTEGER NOT NULL DEFAULT 0,
    past_ponr INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    detail TEXT,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts (state, received_at);
CREATE TABLE IF NOT EXISTS runs (
    cluster TEXT NOT NULL,
    action TEXT NOT NULL,
    started_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failovers (
    alert_key TEXT PRIMARY KEY,
    cluster TEXT NOT NULL,
    new_primary TEXT NOT NULL,
    old_primary TEXT,
    at REAL NOT NULL
);
"""
# columns added after the first release (ALTER TABLE keeps existing state directories usable)
MIGRATIONS = (
    ("alerts", "incident", "TEXT NOT NULL DEFAULT ''"),
    ("runs", "alert_key", "TEXT"),
    ("runs", "state", "TEXT NOT NULL DEFAULT 'counted'"),  # 'reserved' until the point of no return
    ("alerts", "decision", "TEXT"),  # JSON: what the action decided at its point of no return
    ("runs", "boot_id", "TEXT"),  # the boot the run started in (NULL: another replica's, or older)
    ("runs", "since_boot", "REAL"),  # seconds since that boot when it started (a clock that never steps)
    ("alerts", "boot_id", "TEXT"),  # likewise when the alert was received
    ("alerts", "since_boot", "REAL"),
)
DEFAULT_REPLICA_LABELS = ("replica", "prometheus", "prometheus_replica")


@dataclass(frozen=True)
class InboxAlert:
    """One recorded alert."""

    key: str
    alertname: str
    fingerprint: str
    starts_at: str
    labels: dict[str, str]
    state: str
    resolved: bool
    past_ponr: bool
    outcome: str | None
    incident: str = ""
    decision: dict[str, Any] | None = None  # recorded at the point of no return (a resumed run finishes it)


@dataclass(frozen=True)
class Delivery:
    """What recording one notification did, per alert: accepted, duplicate, resolved or ignored."""

    key: str
    alertname: str
    result: str
    cancel_running: bool = False
    same_incident: str | None = None


def starts_at_epoch(text: str) -> float | None:
    """Unix time of an Alertmanager ``startsAt`` (RFC 3339, up to nanoseconds); None if unreadable."""
    head, _, rest = text.partition(".")
    zone = rest.lstrip("0123456789") if rest else ""
    fraction = rest[: len(rest) - len(zone)][:6] if rest else ""
    if not rest:
        head, zone = (text[:-1], "Z") if text.endswith("Z") else (text, "")
    normal = f"{head}.{fraction or '0'}{zone}".replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(normal).timestamp()
    except ValueError:
        return None


def _decision(text: str | None) -> dict[str, Any] | None:
    """A stored decision (JSON object), or None (none stored, or unreadable)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class InboxUnavailable(RuntimeError):
    """The inbox could not be written (a full disk, an I/O error); nothing was recorded."""


def alert_key(fingerprint: str, starts_at: str) -> str:
    """The identity of one alert occurrence: Alertmanager's fingerprint plus its start time."""
    return f"{fingerprint}@{starts_at}"


def incident_key(labels: dict[str, str], replica_labels: tuple[str, ...] = DEFAULT_REPLICA_LABELS) -> str:
    """The identity of an incident: the alert's labels without those that only say which Prometheus
    replica evaluated it (so the copies an HA pair sends are one incident)."""
    kept = sorted((k, v) for k, v in labels.items() if k not in replica_labels)
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:24]


class Inbox:
    """SQLite-backed store; each call is one short transaction (callers on the event loop run the
    writing ones in a thread: they fsync)."""

    def __init__(
        self,
        path: Path,
        replica_labels: tuple[str, ...] = DEFAULT_REPLICA_LABELS,
        clock: Clock | None = None,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.replica_labels = tuple(replica_labels)
        self.clock = clock or SystemClock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, column, declaration in MIGRATIONS:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._db.execute("CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident, state)")
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under the lock; on any failure it is rolled back (a rollback that
        fails too, as on a full disk, is not a second error) and a database error is raised as
        InboxUnavailable."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise InboxUnavailable(f"inbox not writable ({exc.sqlite_errorname})") from None

    def probe_write(self) -> None:
        """A real write (a new header in the write-ahead log): raises InboxUnavailable while the disk
        refuses it."""
        with self._transaction():
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            self._db.execute(f"PRAGMA user_version = {(int(version) + 1) % 1_000_000}")

    def record(self, payload: WebhookPayload) -> list[Delivery]:
        """Record a notification atomically and durably; returns what happened to each alert."""
        now = time.time()
        deliveries = []
        with self._transaction():
            for alert in payload.alerts:
                if alert.status == "firing":
                    deliveries.append(self._fire(alert, now))
                else:
                    deliveries.append(self._resolve(alert, now))
        return deliveries

    def _insert(
        self,
        alert: WebhookAlert,
        now: float,
        state: str = "pending",
        outcome: str | None = None,
        detail: str | None = None,
        resolved: bool = False,
    ) -> None:
        key = alert_key(alert.fingerprint, alert.startsAt)
        _, boot, since_boot = self.clock.now()
        self._db.execute(
            "INSERT INTO alerts (key, alertname, fingerprint, starts_at, labels, received_at, incident,"
            " state, outcome, detail, resolved, finished_at, boot_id, since_boot)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                alert.labels.get("alertname", ""),
                alert.fingerprint,
                alert.startsAt,
                json.dumps(alert.labels),
                now,
                incident_key(alert.labels, self.replica_labels),
                state,
                outcome,
                detail,
                int(resolved),
                None if state == "pending" else now,
                boot,
                since_boot,
            ),
        )

    def _fire(self, alert: WebhookAlert, now: float) -> Delivery:
        key = alert_key(alert.fingerprint, alert.startsAt)
        name = alert.labels.get("alertname", "")
        row = self._db.execute("SELECT resolved FROM alerts WHERE key = ?", (key,)).fetchone()
        if row is not None:
            self._db.execute("UPDATE alerts SET deliveries = deliveries + 1 WHERE key = ?", (key,))
            # a firing delivered after its own resolution (out of order, or a late retry) is stale
            return Delivery(key, name, "stale" if row[0] else "duplicate")
        incident = incident_key(alert.labels, self.replica_labels)
        started = starts_at_epoch(alert.startsAt)
        same = self._db.execute(
            "SELECT key FROM alerts WHERE incident = ? AND resolved = 0 AND (state IN ('pending', 'running')"
            " OR (state = 'done' AND outcome NOT IN ('duplicate', 'refused') AND finished_at >= ?))"
            " LIMIT 1",
            (incident, started if started is not None else float("inf")),
        ).fetchone()
        if same is not None:
            self._insert(alert, now, "done", "duplicate", f"same incident as {same[0]}")
            return Delivery(key, name, "duplicate", same_incident=same[0])
        self._insert(alert, now)
        return Delivery(key, name, "accepted")

    def _resolve(self, alert: WebhookAlert, now: float) -> Delivery:
        key = alert_key(alert.fingerprint, alert.startsAt)
        name = alert.labels.get("alertname", "")
        row = self._db.execute("SELECT state, past_ponr FROM alerts WHERE key = ?", (key,)).fetchone()
        if row is None:
            # resolved before we ever saw it fire: remember it, so a late firing is not acted on
            self._insert(alert, now, "cancelled", "cancelled", "resolved before it was seen firing", True)
            return Delivery(key, name, "ignored")
        state, past_ponr = row
        self._db.execute("UPDATE alerts SET resolved = 1 WHERE key = ?", (key,))
        if state == "pending":
            self._db.execute(
                "UPDATE alerts SET state = 'cancelled', outcome = 'cancelled', finished_at = ? WHERE key = ?",
                (time.time(), key),
            )
        return Delivery(key, name, "resolved", cancel_running=state == "running" and not past_ponr)

    def claim_next(self) -> InboxAlert | None:
        """Take the oldest pending alert and mark it running."""
        with self._transaction():
            row = self._db.execute(
                "SELECT key FROM alerts WHERE state = 'pending' AND resolved = 0 ORDER BY received_at LIMIT 1"
            ).fetchone()
            if row is not None:
                self._db.execute(
                    "UPDATE alerts SET state = 'running', started_at = ? WHERE key = ?", (time.time(), row[0])
                )
        return None if row is None else self.get(row[0])

    def get(self, key: str) -> InboxAlert | None:
        """One alert by key."""
        with self._lock:
            row = self._db.execute(
                "SELECT key, alertname, fingerprint, starts_at, labels, state, resolved, past_ponr, outcome,"
                " incident, decision FROM alerts WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return InboxAlert(
            row[0],
            row[1],
            row[2],
            row[3],
            json.loads(row[4]),
            row[5],
            bool(row[6]),
            bool(row[7]),
            row[8],
            row[9],
            _decision(row[10]),
        )

    def mark_point_of_no_return(self, key: str, decision: dict[str, Any] | None = None) -> None:
        """From now on the alert's action is not cancelled and not repeated after a restart; a
        resumed run finishes ``decision`` (which server a failover promotes) instead."""
        with self._transaction():
            self._db.execute(
                "UPDATE alerts SET past_ponr = 1, decision = ? WHERE key = ?",
                (json.dumps(decision) if decision else None, key),
            )
            self._db.execute("UPDATE runs SET state = 'counted' WHERE alert_key = ?", (key,))

    def finish(self, key: str, outcome: str, detail: str) -> None:
        """Record the final outcome of an alert's action."""
        state = "cancelled" if outcome == "cancelled" else "done"
        with self._transaction():
            self._db.execute(
                "UPDATE alerts SET state = ?, outcome = ?, detail = ?, finished_at = ? WHERE key = ?",
                (state, outcome, detail, time.time(), key),
            )

    def interrupted(self) -> list[InboxAlert]:
        """Alerts left 'running' by a crash. Those before their point of no return go back to pending
        (nothing irreversible happened); those past it are returned to be resumed (verify, not redo)."""
        with self._transaction():
            # nothing runs yet: a reservation not counted is an attempt that never passed its point of
            # no return, so it gives back its place in the rate limit and the cooldown
            self._db.execute("DELETE FROM runs WHERE state = 'reserved'")
            self._db.execute(
                "UPDATE alerts SET state = 'pending'"
                " WHERE state = 'running' AND past_ponr = 0 AND resolved = 0"
            )
            self._db.execute(
                "UPDATE alerts SET state = 'cancelled', outcome = 'cancelled'"
                " WHERE state = 'running' AND past_ponr = 0 AND resolved = 1"
            )
            keys = [
                r[0] for r in self._db.execute("SELECT key FROM alerts WHERE state = 'running'").fetchall()
            ]
        return [a for a in (self.get(k) for k in keys) if a is not None]

    def active_with(self, cluster: str, action: str, region: str | None, within: float) -> bool:
        """True if an unresolved alert for ``cluster`` asking for ``action`` (in ``region``, when given)
        was received in the last ``within`` seconds (on the boot clock within this boot, as reserve
        measures) and did not end refused or cancelled."""
        wall, boot, since_boot = self.clock.now()
        age = "CASE WHEN boot_id = :boot THEN :since - since_boot ELSE max(0, :wall - received_at) END"
        with self._lock:
            rows = self._db.execute(
                f"SELECT labels FROM alerts WHERE {age} < :within AND resolved = 0"
                " AND coalesce(outcome, '') NOT IN ('refused', 'cancelled')",
                {"boot": boot, "since": since_boot, "wall": wall, "within": within},
            ).fetchall()
        for (text,) in rows:
            labels = json.loads(text)
            same_region = region is None or labels.get("region") in (None, region)
            if labels.get("cluster") == cluster and labels.get("action") == action and same_region:
                return True
        return False

    def pending_count(self) -> int:
        """Alerts recorded whose action has not finished."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM alerts WHERE state IN ('pending', 'running')"
            ).fetchone()
        return int(row[0])

    def reserve(
        self, key: str, cluster: str, action: str, max_runs: int, per: float, cooldown: float
    ) -> str | None:
        """Check the rate limit (``max_runs`` per ``per`` seconds on ``cluster``) and the cooldown of
        ``action`` on ``cluster`` and, if both allow it, reserve a run for alert ``key``, in one
        transaction. Returns the limit that stops it ('rate_limit', 'cooldown'), or None if reserved.
        Ages are taken on this boot's clock: a run of another boot (or another replica) is first
        placed on it by its wall-clock age, never below zero (a run dated in the future counts as
        now), and from then on ages with the boot clock, whatever the wall clock does."""
        wall, boot, since_boot = self.clock.now()
        age = "max(0, :since - since_boot)"
        now = {"boot": boot, "since": since_boot, "wall": wall, "cluster": cluster, "action": action}
        with self._transaction():
            self._db.execute(
                "UPDATE runs SET since_boot = :since - max(0, :wall - started_at), boot_id = :boot"
                " WHERE boot_id IS NOT :boot",
                now,
            )
            (count,) = self._db.execute(
                f"SELECT count(*) FROM runs WHERE cluster = :cluster AND {age} < :per", {**now, "per": per}
            ).fetchone()
            (youngest,) = self._db.execute(
                f"SELECT min({age}) FROM runs WHERE cluster = :cluster AND action = :action", now
            ).fetchone()
            if count >= max_runs:
                blocked: str | None = "rate_limit"
            elif youngest is not None and youngest < cooldown:
                blocked = "cooldown"
            else:
                blocked = None
                self._db.execute(
                    "INSERT INTO runs (cluster, action, started_at, alert_key, state, boot_id, since_boot)"
                    " VALUES (:cluster, :action, :wall, :key, 'reserved', :boot, :since)",
                    {**now, "key": key},
                )
        return blocked

    def keep(self, key: str) -> None:
        """Count the reserved run of ``key`` (its action changed something, or would have in a dry run)."""
        with self._transaction():
            self._db.execute("UPDATE runs SET state = 'counted' WHERE alert_key = ?", (key,))

    def release(self, key: str) -> None:
        """Give back the reservation of ``key`` if it was never counted (nothing was changed)."""
        with self._transaction():
            self._db.execute("DELETE FROM runs WHERE alert_key = ? AND state = 'reserved'", (key,))

    def requeue(self, key: str) -> None:
        """Put an alert interrupted before its point of no return back in the queue (a shutdown, not
        a resolution), releasing its reservation."""
        with self._transaction():
            self._db.execute("DELETE FROM runs WHERE alert_key = ? AND state = 'reserved'", (key,))
            self._db.execute(
                "UPDATE alerts SET state = CASE WHEN resolved = 1 THEN 'cancelled' ELSE 'pending' END,"
                " outcome = CASE WHEN resolved = 1 THEN 'cancelled' ELSE NULL END"
                " WHERE key = ? AND state = 'running' AND past_ponr = 0",
                (key,),
            )

    def runs_since(self, cluster: str, since: float) -> int:
        """How many runs of actions on ``cluster`` (reserved or counted) started since ``since``."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM runs WHERE cluster = ? AND started_at >= ?", (cluster, since)
            ).fetchone()
        return int(row[0])

    def import_runs(self, runs: list[tuple[str, str, str, float]]) -> None:
        """Count runs another replica started ((alert key, cluster, action, unix time)) in this inbox's
        rate limit and cooldown; a run already known (by alert key) is not counted twice. Another
        replica's clock is only known by its wall time (no boot id)."""
        with self._transaction():
            for key, cluster, action, started_at in runs:
                known = self._db.execute("SELECT 1 FROM runs WHERE alert_key = ?", (key,)).fetchone()
                if known is None:
                    self._db.execute(
                        "INSERT INTO runs (cluster, action, started_at, alert_key, state)"
                        " VALUES (?, ?, ?, ?, 'counted')",
                        (cluster, action, started_at, key),
                    )

    def record_failover(
        self, key: str, cluster: str, new_primary: str, old_primary: str | None, at: float | None = None
    ) -> None:
        """Remember that alert ``key``'s action promoted ``new_primary`` of ``cluster`` (once per alert;
        ``at``: when, if not now, as for another replica's failover read from the ledger)."""
        with self._transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO failovers (alert_key, cluster, new_primary, old_primary, at)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, cluster, new_primary, old_primary, time.time() if at is None else at),
            )

    def last_failover(self, cluster: str) -> dict[str, Any] | None:
        """The newest recorded failover of ``cluster`` that promoted a server, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT new_primary, old_primary, alert_key, at FROM failovers WHERE cluster = ?"
                " ORDER BY at DESC, rowid DESC LIMIT 1",
                (cluster,),
            ).fetchone()
        if row is None:
            return None
        return {"cluster": cluster, "new_primary": row[0], "old_primary": row[1], "key": row[2], "at": row[3]}

    def reconcile(
        self, finished: dict[str, str], adopt: list[dict[str, Any]], running: set[str]
    ) -> list[InboxAlert]:
        """A new leader's takeover: alerts in ``finished`` (key → detail) end as ``handled_by_peer``;
        the ledger records in ``adopt`` (another replica passed their point of no return and did not
        finish) and this inbox's own leftovers past it become running, to be resumed verify-only, even
        if the alert resolved here meanwhile (a promotion makes it resolve before the job is done).
        Keys in ``running`` (actions under way here) are left alone. Returns the alerts to resume."""
        now = time.time()
        with self._transaction():
            for key, detail in finished.items():
                if key in running:
                    continue
                self._db.execute(
                    "UPDATE alerts SET state = 'done', outcome = 'handled_by_peer', detail = ?,"
                    " finished_at = ? WHERE key = ? AND state IN ('pending', 'running')",
                    (detail, now, key),
                )
            for record in adopt:
                key = record["key"]
                if key in running:
                    continue
                recorded = record.get("decision")
                decision = json.dumps(recorded) if isinstance(recorded, dict) and recorded else None
                row = self._db.execute("SELECT state FROM alerts WHERE key = ?", (key,)).fetchone()
                if row is None:
                    labels = dict(record.get("labels", {}))
                    self._db.execute(
                        "INSERT INTO alerts (key, alertname, fingerprint, starts_at, labels, received_at,"
                        " incident, state, past_ponr, started_at, decision)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, 'running', 1, ?, ?)",
                        (
                            key,
                            record.get("alertname", ""),
                            record.get("fingerprint", ""),
                            record.get("starts_at", ""),
                            json.dumps(labels),
                            now,
                            incident_key(labels, self.replica_labels),
                            now,
                            decision,
                        ),
                    )
                else:  # whatever this inbox made of it (resolved, a duplicate): the run is under way
                    self._db.execute(
                        "UPDATE alerts SET state = 'running', past_ponr = 1, started_at = ?, outcome = NULL,"
                        " finished_at = NULL, decision = COALESCE(?, decision) WHERE key = ?",
                        (now, decision, key),
                    )
            keys = [
                r[0]
                for r in self._db.execute(
                    "SELECT key FROM alerts WHERE state = 'running' AND past_ponr = 1"
                ).fetchall()
                if r[0] not in running
            ]
        return [a for a in (self.get(k) for k in keys) if a is not None]

    def close(self) -> None:
        with self._lock:
            self._db.close()
