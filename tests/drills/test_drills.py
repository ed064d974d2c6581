"""Every drill against the demo stack: the stack recovers by itself, loses no acknowledged write, and
never ends with two primaries. The demo stack is `tierwatch demo`'s (Express apps and keepalived VRRP
when available, the whole chain with the demo's 5 s window); to keep the suite short, drills that
break different parts of it share one stack, run one after the other (``tierwatch demo drill NAME``
builds a stack of its own per drill)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from report_pixels import check_markers, check_writes, report_screenshot

from tierwatch_lab.demo_build import build
from tierwatch_lab.drill_kit import sample_runs
from tierwatch_lab.drills import DRILLS, SCENARIOS, DrillResult, build_options, wait_until_watched
from tierwatch_lab.drills_backup import BACKUP_DRILLS
from tierwatch_lab.drills_faults import FAULT_DRILLS
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


# slow-app repairs nothing (no recovery action): tests/drills/test_drills_traffic.py; the fault drills have
# their own checker's assertions: tests/drills/test_drills_faults.py; the watcher-loss drills share stacks in
# tests/drills/test_drills_ha.py, the recovery leader's in tests/drills/test_drills_leader.py
HA_SHARED = (
    "etcd-member-loss",
    "kill-prometheus-replica",
    "kill-exporter-vantage",
    "kill-recovery-leader",
    "stale-dns-leader",
)
# checked by tests/drills/test_drills_region.py, test_drills_partition.py and test_drills_backup.py (one
# stack for the three backup drills)
OWN_CHECKER = ("region-loss", "primary-partition", "pg-primary-patroni", *BACKUP_DRILLS)


# drills that break different parts of the stack (and the options their stack needs), one stack each
GROUPS = (
    ("redis-master", "pg-primary"),  # the Redis master, then the PostgreSQL primary
    ("app-instance", "active-lb"),  # an app server (restarted), then the active LB
    ("region",),  # the primary region's app servers
    ("kill-alertmanager-peer", "kill-recovery-leader-pg"),  # two recovery replicas for the second
)


def test_every_drill_is_checked_somewhere() -> None:
    grouped = {scenario for group in GROUPS for scenario in group}
    elsewhere = {"slow-app", *FAULT_DRILLS, *HA_SHARED, *OWN_CHECKER}
    assert grouped | elsewhere == set(SCENARIOS) and not grouped & elsewhere


def check(scenario: str, result: DrillResult) -> None:
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
        # the record moved (read back from Knot), and a client finding the primary by name writes again
        assert any(what.startswith("dns:") and " now " in what for what in events), report
        assert any(what.startswith("recovered by name:") for what in events), report


def check_report(result: DrillResult, directory: Path) -> None:
    """The drill's report, screenshot in Chromium, draws the writes with the outage and the markers."""
    chart, plot = report_screenshot(result, directory)
    assert check_writes(chart, plot, result, "redis") >= 1.0  # the outage: no write for a second or more
    drawn = check_markers(chart, plot)
    assert {"failure", "detected", "alert", "action-started", "writes-back"} <= set(drawn), drawn
    counts = [n for _, _, n in sample_runs(result.primaries_seen["redis"])]
    assert counts[0] == 1 and 0 in counts and counts[-1] == 1 and max(counts) == 1, counts


@pytest.mark.parametrize("group", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_drills_recover_by_themselves(stack: Stack, group: tuple[str, ...], tmp_path: Path) -> None:
    options: dict[str, object] = {}
    for scenario in group:
        options.update(build_options(scenario))
    demo = build(stack, **options)
    wait_until_watched(demo)
    for scenario in group:
        result = DRILLS[scenario](demo, time.time() + 90)
        check(scenario, result)
        if scenario == "redis-master":
            check_report(result, tmp_path)
