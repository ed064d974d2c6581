"""The discovery runner's metrics (``source`` is ``file_sd`` or ``dns_sd``: the entries of one kind of a
cluster add up). Rendered by ``DiscoveryCollector``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..metric_catalog import metric

DISCOVERED_TARGETS = metric(
    "tierwatch_discovery_targets",
    "gauge",
    "Targets the cluster's discovery source currently gives (valid ones, static targets not counted).",
    ("source",),
    scope="cluster",
    section="discovery",
)
INVALID_TARGETS = metric(
    "tierwatch_discovery_invalid_targets",
    "gauge",
    "Discovered entries skipped in the source's current result: no region, a bad name or address, a URL "
    "the static rules refuse, or a name already taken (each logged once as discovery_target_skipped).",
    ("source",),
    scope="cluster",
    section="discovery",
)
DISCOVERY_ERRORS = metric(
    "tierwatch_discovery_errors_total",
    "counter",
    "Failed refreshes of the source (a file unreadable or not in file_sd format, a DNS lookup that failed); "
    "the previous good targets of that file or name are kept.",
    ("source",),
    scope="cluster",
    section="discovery",
)


class DiscoveryCollector:
    """A prometheus-client collector of a ``Discovery``'s metrics (cheap: one row per cluster and kind
    of source), every series there from the start so ``rate()`` works from the first error."""

    def __init__(self, discovery: Any):  # a runner.Discovery (not imported: no cycle)
        self.discovery = discovery

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = list(DISCOVERED_TARGETS.all_labels)
        targets = GaugeMetricFamily(DISCOVERED_TARGETS.name, DISCOVERED_TARGETS.help, labels=labels)
        invalid = GaugeMetricFamily(INVALID_TARGETS.name, INVALID_TARGETS.help, labels=labels)
        errors = CounterMetricFamily(
            DISCOVERY_ERRORS.name.removesuffix("_total"), DISCOVERY_ERRORS.help, labels=labels
        )
        rows = self.discovery.totals()
        for tier, cluster, kind, count, skipped, failed in rows:
            targets.add_metric([tier, cluster, kind], count)
            invalid.add_metric([tier, cluster, kind], skipped)
            errors.add_metric([tier, cluster, kind], failed)
        if rows:
            yield from (targets, invalid, errors)
