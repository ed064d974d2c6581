"""Probe implementations, one module per kind of target (like blackbox_exporter's prober/)."""

from __future__ import annotations

import importlib

from .base import Observation, Probe, ProbeFailure, Sample, TargetInfo, classify_failure

# tier -> "module:Class"; modules are imported on first use so the exporter only loads the client
# libraries of the tiers a config names.
PROBE_CLASSES: dict[str, str] = {
    "app": "tierwatch.probes.http:HttpProbe",
    "lb": "tierwatch.probes.haproxy:HAProxyProbe",
    "redis": "tierwatch.probes.redis:RedisProbe",
    "sentinel": "tierwatch.probes.sentinel:SentinelProbe",
    "postgres": "tierwatch.probes.postgres:PostgresProbe",
}
# Modules that declare metrics without being a per-tier probe class.
EXTRA_METRIC_MODULES: tuple[str, ...] = (
    "tierwatch.probes.vip",
    "tierwatch.probes.queues",
    "tierwatch.recovery.metrics",
    "tierwatch.discovery.metrics",
)


def probe_class(tier: str) -> type[Probe]:
    """The Probe subclass for a tier."""
    module_name, _, class_name = PROBE_CLASSES[tier].partition(":")
    cls: type[Probe] = getattr(importlib.import_module(module_name), class_name)
    return cls


def load_all_metric_modules() -> None:
    """Import every probe module so the metric catalogue is complete (docs, tests)."""
    for path in PROBE_CLASSES.values():
        importlib.import_module(path.partition(":")[0])
    for module in EXTRA_METRIC_MODULES:
        importlib.import_module(module)


__all__ = [
    "Observation",
    "Probe",
    "ProbeFailure",
    "Sample",
    "TargetInfo",
    "classify_failure",
    "load_all_metric_modules",
    "probe_class",
]
