"""The one list of recovery actions: each action's name, where it is implemented, which tiers of
cluster it works on, whether it works on one instance, and whether it is a failover.

Pure data (no import of the recovery package): the config derives ``ActionName`` from it, the
recovery service its allow-list checks and metric series, the action registry its classes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionSpec:
    """One recovery action.

    ``instance``: it works on the one instance the alert names, so a regional failover of that
    instance's region supersedes it. ``failover``: it moves the cluster's primary (or its traffic)
    elsewhere; a completed run counts as a failover.
    """

    name: str
    implementation: str  # "module:Class"
    tiers: tuple[str, ...]
    instance: bool = False
    failover: bool = False


_ACTIONS = "tierwatch.recovery.actions"
CATALOG: tuple[ActionSpec, ...] = (
    ActionSpec("redis_failover", f"{_ACTIONS}.redis_failover:RedisFailover", ("redis",), failover=True),
    ActionSpec("pg_promote", f"{_ACTIONS}.pg_promote:PgPromote", ("postgres",), failover=True),
    ActionSpec("restart_instance", f"{_ACTIONS}.restart:RestartInstance", ("app", "lb"), instance=True),
    ActionSpec("shift_traffic", f"{_ACTIONS}.traffic:ShiftTraffic", ("app",), instance=True),
    ActionSpec("regional_failover", f"{_ACTIONS}.traffic:RegionalFailover", ("app",), failover=True),
    ActionSpec("cache_warmup", f"{_ACTIONS}.cache_warmup:CacheWarmup", ("redis",)),
    ActionSpec("redis_rejoin", f"{_ACTIONS}.redis_rejoin:RedisRejoin", ("redis",)),
    ActionSpec("pg_rejoin", f"{_ACTIONS}.pg_rejoin:PgRejoin", ("postgres",)),
)
ACTIONS: dict[str, ActionSpec] = {spec.name: spec for spec in CATALOG}
# which tiers of cluster each action works on (for creating every series at 0 on start)
ACTION_TIERS: dict[str, tuple[str, ...]] = {spec.name: spec.tiers for spec in CATALOG}
INSTANCE_ACTIONS: frozenset[str] = frozenset(spec.name for spec in CATALOG if spec.instance)
FAILOVER_ACTIONS: frozenset[str] = frozenset(spec.name for spec in CATALOG if spec.failover)


def action_names() -> tuple[str, ...]:
    """Every action's name, in catalogue order."""
    return tuple(spec.name for spec in CATALOG)
