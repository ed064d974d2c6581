"""Every drill against the demo stack: the stack recovers by itself, loses no acknowledged write, and
never ends with two primaries. Each drill builds its own demo stack (Express apps and keepalived VRRP
when available, as `tierwatch demo` does) and the whole chain with the demo's 5 s window."""

from __future__ import annotations

import pytest

from tierwatch_lab.drills import SCENARIOS, run_drill
from tierwatch_lab.drills_backup import BACKUP_DRILLS
from tierwatch_lab.drills_faults import FAULT_DRILLS
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


# slow-app repairs nothing (no recovery action): tests/drills/test_drills_traffic.py; the fault drills have
# their own checker's assertions: tests/drills/test_drills_faults.py; the watcher-loss drills share stacks in
# tests/drills/test_drills_ha.py
HA_SHARED = ("etcd-member-loss", "kill-prometheus-replica", "kill-exporter-vantage")
# checked by tests/drills/test_drills_region.py, test_drills_partition.py and test_drills_backup.py (one
# stack for the three backup drills)
OWN_CHECKER = ("region-loss", "primary-partition", *BACKUP_DRILLS)


@pytest.mark.parametrize(
    "scenario",
    [
        s
        for s in SCENARIOS
        if s != "slow-app" and s not in FAULT_DRILLS and s not in HA_SHARED and s not in OWN_CHECKER
    ],
)
def test_drill_recovers_by_itself(stack: Stack, scenario: str) -> None:
    result = run_drill(scenario, stack=stack, timeout=90)
    report = result.render()
    print("\n" + report)
    assert result.recovered, report
    assert result.lost == 0, report
    assert all(count == 1 for count in result.primaries.values()), report
    events = [what for _, what in result.timeline]
    assert any(what.startswith("failure:") for what in events), report
    assert any(what.startswith("alert:") for what in events), report
    assert any(what.startswith("action:") and "started" in what for what in events), report
    if scenario in ("redis-master", "pg-primary"):
        assert result.acked > 0
        assert any("succeeded" in what for what in events), report
