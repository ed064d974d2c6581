"""Turns the monitor's state into Prometheus metric families (a custom collector).

``collect`` only reads what the last finished probes left in memory; it never contacts a target.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .metric_catalog import (
    BUILD_INFO,
    CIRCUIT_STATE,
    CIRCUIT_STATES,
    FAILURE_REASONS,
    LAST_PROBE,
    PROBE_BUCKETS,
    PROBE_DURATION,
    PROBE_FAILURES,
    ROLE,
    ROLES_BY_TIER,
    ROUND_DURATION,
    ROUND_OVERRUNS,
    ROUNDS,
    TARGETS,
    UP,
    MetricSpec,
)
from .monitor import Monitor
from .probes.vip import VIP_DURATION, VIP_IDENTIFIED, VIP_UP

BUCKET_LABELS = [f"{b:g}" for b in PROBE_BUCKETS]


def family(spec: MetricSpec) -> Metric:
    """An empty metric family for a catalogued spec."""
    labels = list(spec.all_labels)
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels)


def _add(metric: Metric, labels: list[str], value: float) -> None:
    metric.add_metric(labels, value)  # type: ignore[attr-defined]


class TierwatchCollector(Collector):
    """Renders the latest state of every target, the clusters' VIPs and the exporter itself."""

    def __init__(self, monitor: Monitor):
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        # Returning nothing keeps the registry from calling collect() at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        core = {spec.name: family(spec) for spec in (UP, PROBE_FAILURES, CIRCUIT_STATE, ROLE, LAST_PROBE)}
        durations = family(PROBE_DURATION)
        extra: dict[str, Metric] = {}
        by_tier_state: dict[tuple[str, str], int] = {}
        for state in self.monitor.states:
            info = state.info
            labels = list(info.labels)
            status = "unknown" if state.up is None else ("up" if state.up else "down")
            key = (info.tier, status)
            by_tier_state[key] = by_tier_state.get(key, 0) + 1
            _add(core[UP.name], labels, 1.0 if state.up else 0.0)
            for reason in FAILURE_REASONS:
                _add(core[PROBE_FAILURES.name], [*labels, reason], state.failures[reason])
            for breaker_state in CIRCUIT_STATES:
                value = 1.0 if state.breaker.state == breaker_state else 0.0
                _add(core[CIRCUIT_STATE.name], [*labels, breaker_state], value)
            if state.role is not None:
                for role in ROLES_BY_TIER.get(info.tier, ()):
                    _add(core[ROLE.name], [*labels, role], 1.0 if role == state.role else 0.0)
            if state.last_probe is not None:
                _add(core[LAST_PROBE.name], labels, state.last_probe)
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKET_LABELS, state.bucket_counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", state.duration_count))
            durations.add_metric(labels, buckets, state.duration_sum)  # type: ignore[attr-defined]
            for sample in state.samples:
                metric = extra.get(sample.spec.name)
                if metric is None:
                    metric = extra[sample.spec.name] = family(sample.spec)
                _add(metric, [*labels, *sample.labels], sample.value)
        yield from core.values()
        yield durations
        yield from extra.values()
        yield from self._vip_families()
        yield from self._exporter_families(by_tier_state)

    def _vip_families(self) -> Iterator[Metric]:
        families = {spec.name: family(spec) for spec in (VIP_UP, VIP_IDENTIFIED, VIP_DURATION)}
        emitted = False
        for cluster in self.monitor.clusters.values():
            if cluster.vip is None:
                continue
            emitted = True
            labels = ["lb", cluster.config.name]
            _add(families[VIP_UP.name], labels, 1.0 if cluster.vip.up else 0.0)
            _add(families[VIP_IDENTIFIED.name], labels, 1.0 if cluster.vip.served_by else 0.0)
            _add(families[VIP_DURATION.name], labels, cluster.vip.duration)
        if emitted:
            yield from families.values()

    def _exporter_families(self, by_tier_state: dict[tuple[str, str], int]) -> Iterator[Metric]:
        info = family(BUILD_INFO)
        _add(info, [__version__, platform.python_version()], 1.0)
        yield info
        rounds = family(ROUNDS)
        _add(rounds, [], self.monitor.rounds)
        yield rounds
        overruns = family(ROUND_OVERRUNS)
        _add(overruns, [], self.monitor.overruns)
        yield overruns
        if self.monitor.last_round_duration is not None:
            duration = family(ROUND_DURATION)
            _add(duration, [], self.monitor.last_round_duration)
            yield duration
        targets = family(TARGETS)
        tiers = sorted({tier for tier, _ in by_tier_state})
        for tier in tiers:
            for status in ("up", "down", "unknown"):
                _add(targets, [tier, status], by_tier_state.get((tier, status), 0))
        yield targets
