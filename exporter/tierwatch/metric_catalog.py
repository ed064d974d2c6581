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

# Backups (section "backups"): read from pgBackRest's own report by backup_watch.py, on each cluster's
# ``backup.pgbackrest.interval``, off the probe loop; one series set per cluster (labels tier, cluster).
BACKUP_TYPES: tuple[str, ...] = ("full", "diff", "incr")
_B = "backups"
BACKUP_INFO_UP = metric(
    "tierwatch_backup_info_up",
    "gauge",
    "1 if the last read of the cluster's pgBackRest repository succeeded (info and repo-ls ran within "
    "their time and byte bounds, parsed, and the stanza exists), else 0; the other backup series are "
    "then absent until a read succeeds.",
    scope="cluster",
    section=_B,
)
BACKUP_INFO_LAST_READ = metric(
    "tierwatch_backup_info_last_read_timestamp_seconds",
    "gauge",
    "Unix time the last read of the pgBackRest repository ended, successful or not.",
    scope="cluster",
    section=_B,
)
BACKUP_INFO_READ_DURATION = metric(
    "tierwatch_backup_info_read_duration_seconds",
    "gauge",
    "How long the last read of the pgBackRest repository took (both commands), successful or not.",
    scope="cluster",
    section=_B,
)
BACKUP_STANZA_STATUS = metric(
    "tierwatch_backup_stanza_status_code",
    "gauge",
    "pgBackRest's status code of the stanza (0 ok, 1 missing stanza path, 2 no valid backups, 3 missing "
    "stanza data, 4 different cipher, 5 database mismatch, 99 other), whenever info listed the stanza.",
    scope="cluster",
    section=_B,
)
BACKUP_LAST_COMPLETION = metric(
    "tierwatch_backup_last_completion_timestamp_seconds",
    "gauge",
    "Unix time the newest backup of the type (full, diff, incr) stopped; absent if the repository holds "
    "none of that type.",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUP_LAST_DURATION = metric(
    "tierwatch_backup_last_duration_seconds",
    "gauge",
    "Stop minus start of the newest backup of the type.",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUP_LAST_SIZE = metric(
    "tierwatch_backup_last_size_bytes",
    "gauge",
    "Size of the database the newest backup of the type covers (pgBackRest's info.size).",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUP_LAST_REPOSITORY_SIZE = metric(
    "tierwatch_backup_last_repository_size_bytes",
    "gauge",
    "Bytes the newest backup of the type stored in the repository (info.repository.delta).",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUP_LAST_ERROR = metric(
    "tierwatch_backup_last_error",
    "gauge",
    "1 if the newest backup of the type recorded errors (pgBackRest's error flag, e.g. page checksum "
    "failures), else 0.",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUPS = metric(
    "tierwatch_backups",
    "gauge",
    "Backups of the type (full, diff, incr) the repository holds.",
    ("type",),
    scope="cluster",
    section=_B,
)
BACKUP_WAL_SEGMENTS = metric(
    "tierwatch_backup_wal_archive_segments",
    "gauge",
    "WAL segment files (partial ones included) in the archive of the stanza's current database.",
    scope="cluster",
    section=_B,
)
BACKUP_WAL_MISSING = metric(
    "tierwatch_backup_wal_archive_missing_segments",
    "gauge",
    "Segment numbers between the archive's oldest and newest that no file of any timeline covers (a "
    ".partial counts); above 0, every restore whose replay crosses the hole fails.",
    scope="cluster",
    section=_B,
)
BACKUP_WAL_FIRST = metric(
    "tierwatch_backup_wal_archive_first_segment",
    "gauge",
    "The archived WAL range's start: the oldest segment's number in the archive of the stanza's current "
    "database (log * 256 + segment of its name, the timeline left out); absent while it holds none.",
    scope="cluster",
    section=_B,
)
BACKUP_WAL_LAST = metric(
    "tierwatch_backup_wal_archive_last_segment",
    "gauge",
    "The archived WAL range's end: the newest segment's number (as tierwatch_backup_wal_archive_first_"
    "segment); last - first + 1 - missing = segments of distinct numbers.",
    scope="cluster",
    section=_B,
)
BACKUP_WAL_LAST_PUSH = metric(
    "tierwatch_backup_wal_archive_last_push_timestamp_seconds",
    "gauge",
    "Repository modification time of the newest WAL segment file of the archive; absent while it holds none.",
    scope="cluster",
    section=_B,
)
BACKUP_HEARTBEAT_WRITE = metric(
    "tierwatch_backup_heartbeat_write_success",
    "gauge",
    "On the primary (master) of a cluster with backup.heartbeat_table (heartbeat_key): 1 if this probe "
    "wrote the heartbeat, else 0 (no privilege, missing table, read-only, timed out); the probe itself "
    "does not fail on it.",
    section=_B,
)

# Service discovery (section "service_discovery"): the records of ``service_discovery:`` as their
# authoritative server answers them, checked by dns_watch.py once per monitor interval, off the probe
# loop; labels tier, cluster (the record's cluster), record (the owner name without its trailing
# dot) and type (A, AAAA, CNAME, SRV).
_SD = "service_discovery"
DNS_RECORD_UP = metric(
    "tierwatch_dns_record_up",
    "gauge",
    "1 if the last check's query of the record was answered by service_discovery.server (an empty "
    "answer counts: the record is missing), else 0 (no answer in time, refused, garbled); "
    "tierwatch_dns_record_matches is then absent.",
    ("record", "type"),
    scope="cluster",
    section=_SD,
)
DNS_RECORD_MATCHES = metric(
    "tierwatch_dns_record_matches",
    "gauge",
    "1 if the record holds exactly the value of the cluster's live primary (Redis, PostgreSQL: the one "
    "target up with the role primary) or of a region with an app target up (app clusters), as this "
    "exporter sees them at the answer, else 0 (also while there is no live primary, or more than one).",
    ("record", "type"),
    scope="cluster",
    section=_SD,
)
DNS_RECORD_LAST_CHECK = metric(
    "tierwatch_dns_record_last_check_timestamp_seconds",
    "gauge",
    "Unix time the last check of the record ended, answered or not.",
    ("record", "type"),
    scope="cluster",
    section=_SD,
)
DNS_RECORD_TTL = metric(
    "tierwatch_dns_record_ttl_seconds",
    "gauge",
    "TTL of the record: the answer's where the DNS client reports it, else service_discovery.ttl (the "
    "TTL the recovery service writes); how long resolvers may keep serving an old value.",
    ("record", "type"),
    scope="cluster",
    section=_SD,
)
