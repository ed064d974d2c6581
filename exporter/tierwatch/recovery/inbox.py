"""The durable inbox: every firing alert is recorded (SQLite, fsynced) before the webhook answers 2xx,
once per alert (fingerprint + startsAt) whoever sends it and however often. Actions run from here, so
a crash or restart loses nothing and repeats nothing."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .webhook import WebhookPayload

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
"""


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


@dataclass(frozen=True)
class Delivery:
    """What recording one notification did, per alert: accepted, duplicate, resolved or ignored."""

    key: str
    alertname: str
    result: str
    cancel_running: bool = False


def alert_key(fingerprint: str, starts_at: str) -> str:
    """The identity of one alert occurrence: Alertmanager's fingerprint plus its start time."""
    return f"{fingerprint}@{starts_at}"


class Inbox:
    """SQLite-backed store, safe to call from the event loop (each call is a short transaction)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def record(self, payload: WebhookPayload) -> list[Delivery]:
        """Record a notification atomically and durably; returns what happened to each alert."""
        now = time.time()
        deliveries = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for alert in payload.alerts:
                    key = alert_key(alert.fingerprint, alert.startsAt)
                    name = alert.labels.get("alertname", "")
                    if alert.status == "firing":
                        inserted = self._db.execute(
                            "INSERT OR IGNORE INTO alerts (key, alertname, fingerprint, starts_at, labels,"
                            " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (key, name, alert.fingerprint, alert.startsAt, json.dumps(alert.labels), now),
                        ).rowcount
                        if not inserted:
                            self._db.execute(
                                "UPDATE alerts SET deliveries = deliveries + 1 WHERE key = ?", (key,)
                            )
                        deliveries.append(Delivery(key, name, "accepted" if inserted else "duplicate"))
                    else:
                        deliveries.append(self._resolve(key, name))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deliveries

    def _resolve(self, key: str, name: str) -> Delivery:
        row = self._db.execute("SELECT state, past_ponr FROM alerts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return Delivery(key, name, "ignored")  # resolved before we ever saw it fire: nothing to do
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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT key FROM alerts WHERE state = 'pending' AND resolved = 0 ORDER BY received_at LIMIT 1"
            ).fetchone()
            if row is None:
                self._db.execute("COMMIT")
                return None
            self._db.execute(
                "UPDATE alerts SET state = 'running', started_at = ? WHERE key = ?", (time.time(), row[0])
            )
            self._db.execute("COMMIT")
        return self.get(row[0])

    def get(self, key: str) -> InboxAlert | None:
        """One alert by key."""
        with self._lock:
            row = self._db.execute(
                "SELECT key, alertname, fingerprint, starts_at, labels, state, resolved, past_ponr, outcome"
                " FROM alerts WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return InboxAlert(
            row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], bool(row[6]), bool(row[7]), row[8]
        )

    def mark_point_of_no_return(self, key: str) -> None:
        """From now on the alert's action is not cancelled and not repeated after a restart."""
        with self._lock:
            self._db.execute("UPDATE alerts SET past_ponr = 1 WHERE key = ?", (key,))

    def finish(self, key: str, outcome: str, detail: str) -> None:
        """Record the final outcome of an alert's action."""
        state = "cancelled" if outcome == "cancelled" else "done"
        with self._lock:
            self._db.execute(
                "UPDATE alerts SET state = ?, outcome = ?, detail = ?, finished_at = ? WHERE key = ?",
                (state, outcome, detail, time.time(), key),
            )

    def interrupted(self) -> list[InboxAlert]:
        """Alerts left 'running' by a crash. Those before their point of no return go back to pending
        (nothing irreversible happened); those past it are returned to be resumed (verify, not redo)."""
        with self._lock:
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

    def active_with(self, cluster: str, action: str, region: str | None, since: float) -> bool:
        """True if an unresolved alert for ``cluster`` asking for ``action`` (in ``region``, when given)
        was received since ``since`` and did not end refused or cancelled."""
        with self._lock:
            rows = self._db.execute(
                "SELECT labels FROM alerts WHERE received_at >= ? AND resolved = 0"
                " AND coalesce(outcome, '') NOT IN ('refused', 'cancelled')",
                (since,),
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

    def record_run(self, cluster: str, action: str) -> None:
        """Remember that an action started on a cluster (for rate limits and cooldowns across restarts)."""
        with self._lock:
            self._db.execute("INSERT INTO runs VALUES (?, ?, ?)", (cluster, action, time.time()))

    def runs_since(self, cluster: str, since: float) -> int:
        """How many actions started on ``cluster`` since ``since`` (Unix time)."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM runs WHERE cluster = ? AND started_at >= ?", (cluster, since)
            ).fetchone()
        return int(row[0])

    def last_run(self, cluster: str, action: str) -> float | None:
        """When ``action`` last started on ``cluster``."""
        with self._lock:
            row = self._db.execute(
                "SELECT max(started_at) FROM runs WHERE cluster = ? AND action = ?", (cluster, action)
            ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
