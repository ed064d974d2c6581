"""Gauge families built from catalogue specs as a collector adds samples: the watchers' collectors
(backup_watch, dns_watch) render their readings through it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily

from .metric_catalog import MetricSpec


class GaugeFamilies:
    """One GaugeMetricFamily per spec, made at its first sample, yielded in that order."""

    def __init__(self) -> None:
        self._families: dict[str, GaugeMetricFamily] = {}

    def add(self, spec: MetricSpec, labels: Sequence[str], value: float) -> None:
        family = self._families.get(spec.name)
        if family is None:
            family = self._families[spec.name] = GaugeMetricFamily(
                spec.name, spec.help, labels=list(spec.all_labels)
            )
        family.add_metric(list(labels), value)

    def __iter__(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families.values())


Add = Callable[[MetricSpec, Sequence[str], float], None]


class GaugeCollector(ABC):
    """A collector of gauges whose families vary with what was read (``describe`` is empty, so the
    registry does not check them up front); ``render`` adds the samples."""

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = GaugeFamilies()
        self.render(families.add)
        yield from families

    @abstractmethod
    def render(self, add: Add) -> None:
        """Add every sample: ``add(spec, label values, value)``."""
