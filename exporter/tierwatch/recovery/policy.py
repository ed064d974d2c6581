"""What may run: the allow-list, the catalogue's tiers, supersession by a regional failover, one action
per cluster at a time, and the rate limit and cooldown (a run reserved in the same step that checks
them; it counts from the point of no return, and an attempt that ends before it gives it back)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from ..action_catalog import ACTION_TIERS, INSTANCE_ACTIONS
from ..config import ClusterConfig, RecoverySettings
from .audit import AuditTrail
from .inbox import Inbox, InboxAlert
from .self_metrics import RecoveryMetrics


class Policy:
    """The limits and the allow-list; ``blocked`` records what they stopped."""

    def __init__(self, inbox: Inbox, audit: AuditTrail, metrics: RecoveryMetrics):
        self.inbox, self.audit, self.metrics = inbox, audit, metrics
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def allowed_action(alert: InboxAlert, settings: RecoverySettings) -> str | None:
        """The action the allow-list lets this alert run, or None (not listed, or the alert's own
        ``action`` label names another)."""
        allowed = settings.allowed(alert.alertname)
        action = allowed.action if allowed else None
        if action is None or alert.labels.get("action", action) != action:
            return None
        return action

    @staticmethod
    def acts_on(action: str, cluster: ClusterConfig) -> bool:
        """Whether the catalogue lets ``action`` act on this cluster's tier (else a mislabelled alert)."""
        return cluster.tier in ACTION_TIERS[action]

    @staticmethod
    def regional(alertname: str, settings: RecoverySettings) -> bool:
        """Whether the allow-list lets this alert's failover promote outside the old primary's region."""
        allowed = settings.allowed(alertname)
        return bool(allowed and allowed.regional)

    async def superseded(
        self, alert: InboxAlert, cluster: str, action: str, settings: RecoverySettings
    ) -> bool:
        """For an action on one instance, when regional failovers are allowed: wait ``settle``
        seconds, then: is a regional failover of this alert's region on its way?"""
        if action not in INSTANCE_ACTIONS or "regional_failover" not in settings.allowed_actions():
            return False
        if settings.settle > 0:
            await asyncio.sleep(settings.settle)
        window = max(settings.cooldown, 600.0)
        region = alert.labels.get("region")
        return self.inbox.active_with(cluster, "regional_failover", region, window)

    @asynccontextmanager
    async def cluster_lock(self, cluster: str, waiting: Callable[[], None]) -> AsyncIterator[None]:
        """One action per cluster at a time; ``waiting`` is called when another holds the lock."""
        lock = self._locks.setdefault(cluster, asyncio.Lock())
        if lock.locked():
            waiting()
        async with lock:
            yield

    async def reserve(
        self, alert: InboxAlert, cluster: str, action: str, settings: RecoverySettings
    ) -> tuple[str, str] | None:
        """Reserve a run under the rate limit and the cooldown; the limit that stops it and why, or None."""
        limits = settings.rate_limit
        blocked = await asyncio.to_thread(
            self.inbox.reserve, alert.key, cluster, action, limits.max_actions, limits.per, settings.cooldown
        )
        if blocked is None:
            return None
        why = "rate limit reached" if blocked == "rate_limit" else "in cooldown after the previous run"
        return blocked, why

    def blocked(self, tier: str, cluster: str, action: str, limit: str, base: dict[str, Any]) -> None:
        self.audit.record("blocked", **base, action=action, limit=limit)
        self.metrics.blocked.labels(tier, cluster, action, limit).inc()
