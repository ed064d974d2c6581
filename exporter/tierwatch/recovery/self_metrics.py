"""The recovery service's own metrics (its /metrics, job="tierwatch-recovery"), named from the
catalogue in metrics.py (docs/metrics.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
)

from ..config import ClusterConfig
from ..config.service_discovery import ServiceDiscovery, record_label
from ..metric_catalog import MetricSpec
from . import metrics as m


def _counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    return Counter(spec.name.removesuffix("_total"), spec.help, list(spec.all_labels), registry=registry)


def _gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(spec.name, spec.help, list(spec.all_labels), registry=registry)


NOTIFICATION_RESULTS = (
    "accepted",
    "duplicate",
    "stale",
    "resolved",
    "unauthorized",
    "invalid",
    "too_large",
    "timed_out",
    "unavailable",
)


@dataclass
class RecoveryMetrics:
    """The service's own metrics, named from the catalogue (docs/metrics.md)."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # process_*, python_*
            r.register(standard)
        self.actions = _counter(m.ACTIONS_TOTAL, r)
        self.blocked = _counter(m.BLOCKED_TOTAL, r)
        self.failovers = _counter(m.FAILOVERS_TOTAL, r)
        self.dns_updates = _counter(m.DNS_UPDATES_TOTAL, r)
        self.last_failover = _gauge(m.LAST_FAILOVER, r)
        self.notifications = _counter(m.NOTIFICATIONS_TOTAL, r)
        self.pending = _gauge(m.INBOX_PENDING, r)
        self.duration = _gauge(m.ACTION_DURATION, r)
        self.truncated = _counter(m.TRUNCATED_ALERTS, r)
        self.dropped = _counter(m.CONNECTIONS_DROPPED, r)
        self.reload_ok = _gauge(m.CONFIG_RELOAD_SUCCESSFUL, r)
        self.reload_time = _gauge(m.CONFIG_RELOAD_TIME, r)
        self.writable = _gauge(m.STATE_WRITABLE, r)
        self.store_failures = _counter(m.STATE_FAILURES_TOTAL, r)
        for store in ("audit", "inbox"):
            self.writable.labels(store).set(1)
            self.store_failures.labels(store)
        self.reload_ok.set(1)
        self.reload_time.set(time.time())
        for result in NOTIFICATION_RESULTS:
            self.notifications.labels(result)
        for reason in ("read_timeout", "evicted", "over_limit"):
            self.dropped.labels(reason)

    def create_series(
        self, clusters: list[ClusterConfig], actions: set[str], dns: ServiceDiscovery | None = None
    ) -> None:
        """Create every action/outcome, limit and DNS record/result series at 0, so increase() sees
        the first event."""
        tiers = {cluster.name: cluster.tier for cluster in clusters}
        if dns is not None:
            for record in dns.records:
                if record.cluster in tiers:
                    name = record_label(record.fqdn(dns.zone))
                    for result in m.DNS_RESULTS:
                        self.dns_updates.labels(tiers[record.cluster], record.cluster, name, result)
        for cluster in clusters:
            for action in sorted(actions):
                if cluster.tier not in m.ACTION_TIERS.get(action, ()):
                    continue
                for outcome in m.OUTCOMES:
                    self.actions.labels(cluster.tier, cluster.name, action, outcome)
                for limit in m.LIMITS:
                    self.blocked.labels(cluster.tier, cluster.name, action, limit)
                self.failovers.labels(cluster.tier, cluster.name, action)
