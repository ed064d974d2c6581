"""The one list of tiers: for each kind of target, the URL schemes its targets use, the probe that
watches it, the roles and failure reasons it exports, whether its probe reads the cluster's
membership, and the config keys that are valid only on it (including its clusters' ``backup:`` keys).

Pure data (no import of the rest of the package): the config reads its schemes and keys, the probes
build their ``{tier: loader}`` from its names, the monitor its membership, the metrics its roles and
reasons. ``sentinel`` is a tier of targets, not of clusters: a Redis cluster's ``sentinel:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metric_catalog import FAILURE_REASONS


@dataclass(frozen=True)
class TierSpec:
    """One tier.

    ``probe``: the module of ``tierwatch.probes`` that probes it (loaded on first use).
    ``discovery_scheme``: the scheme of its discovered targets when the discovery entry names none
    (empty: its targets are not discovered). ``membership``: its probe uses the cluster's other
    members (a primary names its replicas by address, a Sentinel its master), so a change of the
    cluster's target list rebuilds its probes. ``http``: its targets are HTTP targets (expect_status,
    expect_body, TLS options). ``cluster_keys`` / ``target_keys``: keys valid only on its clusters /
    targets. ``backup_keys``: the keys of a cluster's ``backup:`` section valid only on its clusters
    (a cluster may have ``backup:`` if its tier has some).
    """

    name: str
    probe: str
    schemes: tuple[str, ...]
    discovery_scheme: str = ""
    cluster: bool = True
    roles: tuple[str, ...] = ()
    reasons: tuple[str, ...] = FAILURE_REASONS
    membership: bool = False
    http: bool = False
    cluster_keys: tuple[str, ...] = ()
    target_keys: tuple[str, ...] = ()
    backup_keys: tuple[str, ...] = ()


# an HTTP target has no password to refuse
_NO_AUTH = tuple(r for r in FAILURE_REASONS if r != "auth")

CATALOG: tuple[TierSpec, ...] = (
    TierSpec(
        "lb",
        "haproxy",
        ("http", "https"),
        "http",
        roles=("active", "standby"),
        reasons=_NO_AUTH,
        http=True,
        cluster_keys=("vip",),
        target_keys=("stats_socket", "stats_url"),
    ),
    TierSpec("app", "http", ("http", "https"), "http", reasons=_NO_AUTH, http=True),
    TierSpec(
        "redis",
        "redis",
        ("redis", "rediss", "unix"),
        "redis",
        roles=("primary", "replica"),
        membership=True,
        cluster_keys=("sentinel", "queues"),
        backup_keys=("heartbeat_key",),
    ),
    TierSpec("sentinel", "sentinel", ("redis", "rediss"), cluster=False, membership=True),
    TierSpec(
        "postgres",
        "postgres",
        ("postgresql", "postgres"),
        "postgresql",
        roles=("primary", "replica"),
        membership=True,
        cluster_keys=("top_tables", "patroni"),
        backup_keys=("last_backup_file", "pgbackrest", "heartbeat_table"),
    ),
)
TIERS: dict[str, TierSpec] = {spec.name: spec for spec in CATALOG}
# the tiers a cluster may have (``clusters[].tier``), in catalogue order
CLUSTER_TIERS: tuple[str, ...] = tuple(spec.name for spec in CATALOG if spec.cluster)
HTTP_TIERS: tuple[str, ...] = tuple(spec.name for spec in CATALOG if spec.http)
MEMBERSHIP_TIERS: frozenset[str] = frozenset(spec.name for spec in CATALOG if spec.membership)
URL_SCHEMES: dict[str, tuple[str, ...]] = {spec.name: spec.schemes for spec in CATALOG}
ROLES_BY_TIER: dict[str, tuple[str, ...]] = {spec.name: spec.roles for spec in CATALOG if spec.roles}
REASONS_BY_TIER: dict[str, tuple[str, ...]] = {spec.name: spec.reasons for spec in CATALOG}
# cluster key -> the one tier whose clusters may set it
CLUSTER_KEY_TIER: dict[str, str] = {key: spec.name for spec in CATALOG for key in spec.cluster_keys}
TARGET_KEY_TIER: dict[str, str] = {key: spec.name for spec in CATALOG for key in spec.target_keys}
# ``backup:`` key -> the one tier whose clusters may set it; the tiers whose clusters may have ``backup:``
BACKUP_KEY_TIER: dict[str, str] = {key: spec.name for spec in CATALOG for key in spec.backup_keys}
BACKUP_TIERS: tuple[str, ...] = tuple(spec.name for spec in CATALOG if spec.backup_keys)


def tier_names() -> tuple[str, ...]:
    """Every tier's name, in catalogue order (cluster tiers and ``sentinel``)."""
    return tuple(spec.name for spec in CATALOG)


def failure_reasons(tier: str) -> tuple[str, ...]:
    """The reasons a probe of ``tier`` can fail with (HTTP targets never fail on ``auth``)."""
    spec = TIERS.get(tier)
    return spec.reasons if spec is not None else FAILURE_REASONS


def roles(tier: str) -> tuple[str, ...]:
    """The values of ``tierwatch_role`` for ``tier`` (none for app servers and Sentinels)."""
    spec = TIERS.get(tier)
    return spec.roles if spec is not None else ()
