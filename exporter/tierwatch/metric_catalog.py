"""The catalogue of every metric the exporter produces.

Each probe module declares its tier-specific metrics here with ``metric(...)``; the collector, the
generated docs/metrics.md and the tests all read the same catalogue, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricKind = Literal["gauge", "counter", "histogram", "info"]
Scope = Literal["target", "cluster", "region", "exporter"]

TARGET_LABELS: tuple[str, ...] = ("tier", "cluster", "target", "region")
CLUSTER_LABELS: tuple[str, ...] = ("tier", "cluster")
REGION_LABELS: tuple[str, ...] = ("tier", "cluster", "region")


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: its exposed name, type, help text and the labels it adds."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    scope: Scope = "target"
    section: str = "core"
    opt_in: str = ""  # the ``metrics.<key>`` setting that turns the family on; "" = always exported

    @property
    def all_labels(self) -> tuple[str, ...]:
        """Target, region or cluster labels followed by the metric's own labels."""
        base = {"target": TARGET_LABELS, "cluster": CLUSTER_LABELS, "region": REGION_LABELS, "exporter": ()}
        return (*base[self.scope], *self.labels)


CATALOG: dict[str, MetricSpec] = {}


def metric(
    name: str,
    kind: MetricKind,
    help: str,
    labels: tuple[str, ...] = (),
    *,
    scope: Scope = "target",
    section: str = "core",
    opt_in: str = "",
) -> MetricSpec:
    """Declare a metric family; names are unique across the exporter."""
    if kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter {name} must end in _total")
    if name in CATALOG:
        raise ValueError(f"metric {name} declared twice")
    spec = MetricSpec(name, kind, help, labels, scope, section, opt_in)
    CATALOG[name] = spec
    return spec


# Core metrics: the contract shared with the rules, dashboards and recovery service (DESIGN.md).
UP = metric("tierwatch_up", "gauge", "1 if the last probe of the target succeeded, else 0.")
PROBE_DURATION = metric(
    "tierwatch_probe_duration_seconds",
    "histogram",
    "Latency of probes of the target (successful or not), a histogram per target (16 series).",
    opt_in="probe_duration_histogram",
)
PROBE_LAST_DURATION = metric(
    "tierwatch_probe_last_duration_seconds",
    "gauge",
    "Duration of the last probe of the target, successful or not (blackbox_exporter's "
    "probe_duration_seconds).",
)
PROBES = metric(
    "tierwatch_probes_total",
    "counter",
    "Probes of the target, successful or not (not counted while its circuit is open); the denominator of "
    "the error ratio with tierwatch_probe_failures_total.",
)
CLUSTER_PROBE_DURATION = metric(
    "tierwatch_cluster_probe_duration_seconds",
    "histogram",
    "Latency of the probes of the cluster's targets in a region (successful or not): latency quantiles "
    "per cluster and region without a histogram per target.",
    scope="region",
)
PROBE_FAILURES = metric(
    "tierwatch_probe_failures_total",
    "counter",
    "Failed probes of the target by reason (timeout, refused, auth, protocol, error).",
    ("reason",),
)
CIRCUIT_STATE = metric(
    "tierwatch_circuit_state",
    "gauge",
    "Circuit breaker state of the target: 1 for the current state (closed, open, half_open).",
    ("state",),
)
ROLE = metric(
    "tierwatch_role",
    "gauge",
    "Role of the target: 1 for the current role (primary/replica, or active/standby for load balancers).",
    ("role",),
)
LAST_PROBE = metric(
    "tierwatch_last_probe_timestamp_seconds",
    "gauge",
    "Unix time of the last probe attempt of the target (not updated while the circuit is open).",
)

# About the exporter itself.
BUILD_INFO = metric(
    "tierwatch_build_info",
    "gauge",
    "Always 1; labels carry the tierwatch and Python versions.",
    ("version", "python_version"),
    scope="exporter",
    section="exporter",
)
ROUND_DURATION = metric(
    "tierwatch_probe_round_duration_seconds",
    "gauge",
    "Wall time of the last probe round, from its first probe's start to its last probe's end (the probes "
    "are spread over the interval).",
    scope="exporter",
    section="exporter",
)
ROUNDS = metric(
    "tierwatch_probe_rounds_total",
    "counter",
    "Probe rounds completed since the exporter started.",
    scope="exporter",
    section="exporter",
)
ROUND_OVERRUNS = metric(
    "tierwatch_probe_round_overruns_total",
    "counter",
    "Probe rounds that did not finish within the monitor interval (a target's probe was still running, or "
    "waiting for a concurrency slot, when its next slot came; or the loop fell a whole interval behind).",
    scope="exporter",
    section="exporter",
)
TARGETS = metric(
    "tierwatch_targets",
    "gauge",
    "Configured targets by tier and state (up, down, unknown = not probed yet).",
    ("tier", "state"),
    scope="exporter",
    section="exporter",
)

CONFIG_RELOAD_SUCCESSFUL = metric(
    "tierwatch_config_last_reload_successful",
    "gauge",
    "1 if the last configuration reload (SIGHUP or POST /-/reload) succeeded, else 0 (the previous config "
    "keeps running); 1 at start.",
    scope="exporter",
    section="exporter",
)
CONFIG_RELOAD_TIME = metric(
    "tierwatch_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration load (the start, or a reload).",
    scope="exporter",
    section="exporter",
)

FAILURE_REASONS: tuple[str, ...] = ("timeout", "refused", "auth", "protocol", "error")
CIRCUIT_STATES: tuple[str, ...] = ("closed", "open", "half_open")
# each tier's roles and failure reasons: tier_catalog.py
PROBE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

# Core metrics shared by several tiers (DESIGN.md); tier modules emit them through Observation.
REPLICATION_LAG_BYTES = metric(
    "tierwatch_replication_lag_bytes",
    "gauge",
    "How far a replica is behind its primary, in bytes of replication stream (on the replica's labels).",
)
REPLICATION_LAG_SECONDS = metric(
    "tierwatch_replication_lag_seconds",
    "gauge",
    "How far a replica is behind its primary, in seconds, where the server can tell.",
)
QUEUE_LENGTH = metric(
    "tierwatch_queue_length",
    "gauge",
    "Jobs in a queue, by state where the queue system has states (otherwise state=waiting).",
    ("queue", "state"),
)
QUEUE_OLDEST_AGE = metric(
    "tierwatch_queue_oldest_age_seconds",
    "gauge",
    "Age of the oldest waiting job in a queue, where it can be known.",
    ("queue",),
)
CACHE_HITS = metric(
    "tierwatch_cache_hits_total",
    "counter",
    "Cache hits: Redis keyspace hits; PostgreSQL shared-buffer block hits.",
)
CACHE_MISSES = metric(
    "tierwatch_cache_misses_total",
    "counter",
    "Cache misses: Redis keyspace misses; PostgreSQL blocks read from disk or OS cache.",
)
