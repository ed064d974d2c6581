"""The one list of recovery actions: each action's name, which tiers of cluster it works on, whether
it works on one instance, and whether it is a failover.

Pure data (no import of the recovery package): the config derives ``ActionName`` from it, the
recovery service its allow-list checks and metric series; the action registry
(tierwatch.recovery.actions) has one lazy import per name here.
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
    tiers: tuple[str, ...]
    instance: bool = False
    failover: bool = False


CATALOG: tuple[ActionSpec, ...] = (
    ActionSpec("redis_failover", ("redis",), failover=True),
    ActionSpec("pg_promote", ("postgres",), failover=True),
    ActionSpec("restart_instance", ("app", "lb"), instance=True),
    ActionSpec("shift_traffic", ("app",), instance=True),
    ActionSpec("regional_failover", ("app",), failover=True),
    ActionSpec("cache_warmup", ("redis",)),
    ActionSpec("redis_rejoin", ("redis",)),
    ActionSpec("pg_rejoin", ("postgres",)),
)
ACTIONS: dict[str, ActionSpec] = {spec.name: spec for spec in CATALOG}
# which tiers of cluster each action works on (for creating every series at 0 on start)
ACTION_TIERS: dict[str, tuple[str, ...]] = {spec.name: spec.tiers for spec in CATALOG}
INSTANCE_ACTIONS: frozenset[str] = frozenset(spec.name for spec in CATALOG if spec.instance)
FAILOVER_ACTIONS: frozenset[str] = frozenset(spec.name for spec in CATALOG if spec.failover)


def action_names() -> tuple[str, ...]:
    """Every action's name, in catalogue order."""
    return tuple(spec.name for spec in CATALOG)
