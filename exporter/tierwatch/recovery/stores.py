"""The service's two stores, the inbox and the audit trail, and whether each can be written now.

Nothing runs without its audit record: while the trail (or the inbox) cannot be written (a full disk),
the webhook answers 503 so that Alertmanager retries, /ready says why and no alert is claimed. All of
it resumes by itself once the disk takes writes again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ..events import EventLog
from .audit import AuditTrail
from .inbox import Inbox, InboxAlert, InboxUnavailable
from .self_metrics import RecoveryMetrics


class StateStores:
    """The inbox and the audit trail in ``state_dir``, with their health in the metrics and the log."""

    def __init__(
        self, state_dir: Path, replica_labels: tuple[str, ...], metrics: RecoveryMetrics, events: EventLog
    ):
        self.metrics, self.events = metrics, events
        self.inbox = Inbox(state_dir / "inbox.sqlite3", replica_labels)
        self.audit = AuditTrail(state_dir / "audit.jsonl", self._audit_health)
        self.inbox_problem: str | None = None  # the inbox's last write failed (cleared by one that works)

    def _audit_health(self, problem: str | None) -> None:
        """The audit trail stopped (problem) or started again (None) being writable (called from the
        audit's writer thread)."""
        self._store_health("audit", problem)

    def _store_health(self, store: str, problem: str | None) -> None:
        """One log line and the metrics each way when a store stops or starts being writable."""
        self.metrics.writable.labels(store).set(0 if problem else 1)
        if problem:
            self.metrics.store_failures.labels(store).inc()
            self.events.emit(f"{store}_unwritable", "error", reason=problem, then="webhooks answered 503")
        else:
            self.events.emit(f"{store}_writable", "info")

    def inbox_failed(self, exc: InboxUnavailable) -> None:
        """An inbox write failed."""
        if self.inbox_problem is None:
            self.inbox_problem = str(exc)
            self._store_health("inbox", self.inbox_problem)

    def inbox_ok(self) -> None:
        """An inbox write succeeded."""
        if self.inbox_problem is not None:
            self.inbox_problem = None
            self._store_health("inbox", None)

    @property
    def problem(self) -> str | None:
        """Why nothing may be recorded or run now (a store that cannot be written), or None."""
        if self.audit.problem is not None:
            return f"audit trail not writable ({self.audit.problem})"
        return self.inbox_problem

    async def claim_next(self) -> InboxAlert | None:
        """The next pending alert to run, or None: none waits, or nothing may run now because the
        audit trail or the inbox cannot be written (it stays pending)."""
        if self.audit.problem is not None:
            return None
        try:
            if self.inbox_problem is not None:  # nothing else writes it while webhooks are refused
                await asyncio.to_thread(self.inbox.probe_write)
                self.inbox_ok()
            return await asyncio.to_thread(self.inbox.claim_next)
        except InboxUnavailable as exc:
            self.inbox_failed(exc)
            return None

    def close(self) -> None:
        self.inbox.close()
        self.audit.close()
