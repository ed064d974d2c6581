"""``tierwatch demo drill SCENARIO``: break the demo stack on purpose and watch the kit repair it.

The registry of the drills: :data:`SCENARIOS` (name → what it does, drill_catalog.py), :data:`DRILLS`
(name → the drill), :data:`BUILD_OPTIONS` (name → how its demo stack is built) and :func:`run_drill`.
Each drill starts a demo stack of its own and returns a :class:`DrillResult` (drill_kit.py: the
writers, the result and its timeline). The drills themselves:

- drills_basic.py: a server killed (Redis master, PostgreSQL primary, app server, active LB, the
  primary region's app servers);
- drills_traffic.py: ``slow-app``, an app server only real traffic sees failing;
- drills_faults.py: pauses, returning old primaries, a watcher cut off (checker: drill_checker.py);
- drills_ha.py: the kit's own components killed during a failover;
- drills_region.py: the whole primary region lost, data tier included;
- drills_partition.py: a primary cut off with some of its clients;
- drills_patroni.py: ``pg-primary-patroni``, the PostgreSQL leader's node killed with Patroni in
  charge (a stack of its own: Patroni members over etcd, not the demo's PostgreSQL);
- drills_backup.py: what failover cannot fix (a bad write, a corrupted backup, a hole in the WAL
  archive), on a demo with backups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .demo_build import build
from .demo_stack import DemoStack
from .drill_catalog import SCENARIOS
from .drill_kit import DrillResult, wait_until_watched
from .drills_backup import BACKUP_DRILLS
from .drills_basic import BASIC_DRILLS
from .drills_faults import FAULT_DRILLS
from .drills_ha import HA_DRILLS
from .drills_partition import PARTITION_DRILLS
from .drills_patroni import PATRONI_DRILLS
from .drills_region import REGION_DRILLS
from .drills_traffic import drill_slow_app
from .stack import Stack

__all__ = [
    "BUILD_OPTIONS",
    "DRILLS",
    "SCENARIOS",
    "DrillResult",
    "build_options",
    "run_drill",
    "wait_until_watched",
]

DRILLS: dict[str, Callable[[DemoStack, float], DrillResult]] = {
    **BASIC_DRILLS,
    "slow-app": drill_slow_app,
    **FAULT_DRILLS,
    **HA_DRILLS,
    **REGION_DRILLS,
    **PARTITION_DRILLS,
    **BACKUP_DRILLS,
}
# keyword arguments of demo_build.build (DemoOptions fields) per scenario; the others get the defaults
BUILD_OPTIONS: dict[str, dict[str, Any]] = {
    "watcher-partition": {"netns_watchers": 2},  # three vantage points, one cut off
    "kill-recovery-leader": {"recovery_replicas": 2},
    "kill-recovery-leader-pg": {"recovery_replicas": 2},
    "etcd-member-loss": {"recovery_replicas": 2},
    "stale-dns-leader": {"recovery_replicas": 2},
    "kill-prometheus-replica": {"prometheus_replicas": 2},
    "kill-exporter-vantage": {"vantages": ("a", "b")},
    "region-loss": {"vantages": ("primary", "failover")},  # one exporter per region
    "primary-partition": {"isolable_primaries": True},  # the primaries in a namespace
}
# the scenarios whose demo has backups (DemoOptions.backups); the others do without: a full backup at
# start and the scheduled jobs would only slow their start and load the machine during the failure
WITH_BACKUPS = frozenset({*BACKUP_DRILLS, "region-loss"})


# the drills read no log: without the collector and mtail (DemoOptions.logs) a drill's stack starts two
# processes fewer (measured: 0.15 s of CPU at start, 3 % of the stack's CPU under the demo's traffic)
WITH_LOGS: frozenset[str] = frozenset()


def build_options(scenario: str) -> dict[str, Any]:
    """The keyword arguments of demo_build.build for ``scenario``'s demo stack."""
    return {
        "backups": scenario in WITH_BACKUPS,
        "logs": scenario in WITH_LOGS,
        **BUILD_OPTIONS.get(scenario, {}),
    }


def run_drill(scenario: str, stack: Stack | None = None, timeout: float = 90.0) -> DrillResult:
    """Start a demo stack, run one drill on it, stop the stack (unless one is given)."""
    if scenario in PATRONI_DRILLS:  # builds its own stack, not a demo
        return PATRONI_DRILLS[scenario](stack, timeout)
    own = stack is None
    stack = stack or Stack()
    try:
        demo = build(stack, **build_options(scenario))
        wait_until_watched(demo)
        return DRILLS[scenario](demo, time.time() + timeout)
    finally:
        if own:
            stack.close()
