"""Webhook → inbox: authenticate → size limit → validate (v4, fingerprints checked) → Inbox.record
(SQLite, fsynced) → 200. An acknowledged notification is in the inbox and in the audit trail; while
either cannot be written the answer is 503, so that Alertmanager retries.

Nothing here blocks the event loop: the body is parsed and the inbox written in a thread, audit records
are written by the audit's own thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..http_server import Receive, Scope, header
from .audit import RateLimitedAudit
from .inbox import InboxUnavailable
from .live import Current
from .self_metrics import RecoveryMetrics
from .stores import StateStores
from .webhook import PayloadError, parse_payload
from .worker import Runs


class Intake:
    """Receives notifications (POST /webhook) into the inbox."""

    def __init__(
        self,
        current: Current,
        stores: StateStores,
        metrics: RecoveryMetrics,
        rejections: RateLimitedAudit,
        runs: Runs,
        wake: Callable[[], None],
    ):
        self.current, self.stores, self.metrics, self.rejections = current, stores, metrics, rejections
        self.runs, self.wake = runs, wake

    def unavailable(self, why: str) -> tuple[int, dict[str, Any]]:
        """503: nothing recorded that could be acted on; Alertmanager retries."""
        self.metrics.notifications.labels("unavailable").inc()
        return 503, {"error": f"not recorded, try again: {why}"}

    async def webhook(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        """Read, check and record one notification; the status and JSON body to answer."""
        live, audit, inbox = self.current(), self.stores.audit, self.stores.inbox
        if not live.auth.check(header(scope, "authorization")):
            # counted always, audited at most once per interval: a flood must not fill the disk
            self.metrics.notifications.labels("unauthorized").inc()
            self.rejections.record("notification_rejected", "unauthorized")
            return 401, {"error": "unauthorized"}
        if audit.problem is not None:  # at once: not after a stall, and before the inbox
            return self.unavailable(f"audit trail not writable ({audit.problem})")
        limit = live.settings.max_body_bytes
        declared = header(scope, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return self.too_large(limit)
        body = bytearray()
        try:
            async with asyncio.timeout(live.settings.read_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":  # gone mid-body (or evicted): nothing to parse
                        return 400, {"error": "connection closed before the body was complete"}
                    body += message.get("body", b"")
                    if len(body) > limit:
                        return self.too_large(limit)
                    if not message.get("more_body"):
                        break
        except TimeoutError:
            self.metrics.notifications.labels("timed_out").inc()
            self.rejections.record("notification_rejected", "timed_out")
            return 408, {"error": f"body not received within {live.settings.read_timeout:g}s"}
        try:
            # in a thread: recomputing every fingerprint of a 1 MiB body takes about 0.1 s of CPU
            payload = await asyncio.to_thread(parse_payload, bytes(body))
        except PayloadError as exc:
            # a valid token does not make a flood of bad bodies worth one record each
            self.metrics.notifications.labels("invalid").inc()
            self.rejections.record("notification_rejected", "invalid", detail=str(exc))
            return exc.status, {"error": str(exc)}
        try:
            deliveries = await asyncio.to_thread(inbox.record, payload)
        except InboxUnavailable as exc:
            self.stores.inbox_failed(exc)
            self.rejections.record("notification_rejected", "unavailable", detail=str(exc))
            return self.unavailable(str(exc))
        self.stores.inbox_ok()
        if payload.truncatedAlerts:
            self.metrics.truncated.inc(payload.truncatedAlerts)
            audit.record("alerts_truncated", count=payload.truncatedAlerts, receiver=payload.receiver)
        sender = header(scope, "user-agent") or "unknown"
        for delivery in deliveries:
            self.metrics.notifications.labels(
                delivery.result if delivery.result != "ignored" else "resolved"
            ).inc()
            extra = {"same_incident_as": delivery.same_incident} if delivery.same_incident else {}
            audit.record(
                f"alert_{delivery.result}",
                alert=delivery.alertname,
                key=delivery.key,
                receiver=payload.receiver,
                sender=sender[:80],
                **extra,
            )
            if delivery.cancel_running:
                self.runs.cancel_before_point_of_no_return(delivery.key)
        self.wake()
        if not await audit.flush():  # acknowledged means audited too
            # the inbox has it (a retry is a duplicate); no action is claimed until the trail is back
            return self.unavailable(f"audit trail not writable ({audit.problem or 'flush timed out'})")
        counts: dict[str, int] = {}
        for delivery in deliveries:
            counts[delivery.result] = counts.get(delivery.result, 0) + 1
        return 200, {"status": "recorded", **counts}

    def too_large(self, limit: int) -> tuple[int, dict[str, Any]]:
        self.metrics.notifications.labels("too_large").inc()
        self.rejections.record("notification_rejected", "too_large", limit_bytes=limit)
        return 413, {"error": f"body larger than {limit} bytes"}
