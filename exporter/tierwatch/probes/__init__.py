"""Probe implementations, one module per kind of target (like blackbox_exporter's prober/).

A tier's probe module is imported on first use (``probe_class``), so the exporter only loads the client
libraries (redis, psycopg) of the tiers its config names. Each loader is a plain import inside a
function, so the layout test sees it like any other import.
"""

from __future__ import annotations

from collections.abc import Callable

from ..tier_catalog import CATALOG
from .base import Observation, Probe, ProbeFailure, Sample, TargetInfo, classify_failure


def _haproxy() -> type[Probe]:
    from .haproxy import HAProxyProbe

    return HAProxyProbe


def _http() -> type[Probe]:
    from .http import HttpProbe

    return HttpProbe


def _redis() -> type[Probe]:
    from .redis import RedisProbe

    return RedisProbe


def _sentinel() -> type[Probe]:
    from .sentinel import SentinelProbe

    return SentinelProbe


def _postgres() -> type[Probe]:
    from .postgres import PostgresProbe

    return PostgresProbe


# probe module (the tier catalogue's ``probe``) -> its loader
_LOADERS: dict[str, Callable[[], type[Probe]]] = {
    "haproxy": _haproxy,
    "http": _http,
    "redis": _redis,
    "sentinel": _sentinel,
    "postgres": _postgres,
}
# tier -> its loader, one per catalogued tier (a KeyError at import names a tier without a probe)
PROBE_LOADERS: dict[str, Callable[[], type[Probe]]] = {spec.name: _LOADERS[spec.probe] for spec in CATALOG}


def probe_class(tier: str) -> type[Probe]:
    """The Probe subclass for a tier (its module imported now if it was not yet)."""
    return PROBE_LOADERS[tier]()


def load_probe_modules() -> None:
    """Import every probe module, so the metric catalogue holds every probe's metrics (docs, tests).

    The metrics of other rooms (the recovery service's, target discovery's) are declared in their own
    modules; whoever needs the whole catalogue imports those too (the lab's docs generator)."""
    for load in PROBE_LOADERS.values():
        load()
    from . import queues, vip  # noqa: F401 - their metric(...) declarations


__all__ = [
    "PROBE_LOADERS",
    "Observation",
    "Probe",
    "ProbeFailure",
    "Sample",
    "TargetInfo",
    "classify_failure",
    "load_probe_modules",
    "probe_class",
]
