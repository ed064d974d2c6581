"""The fault drills (tierwatch_lab/drills_faults.py) against the demo stack with its 5 s detection window: a
paused or returning old primary ends as a replica of the promoted server, no acknowledged write is
lost and no two servers ever acknowledged writes at the same time (the drills' own checker). A
watcher cut off from both primaries in its network namespace promotes nothing."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tierwatch_lab.demo import build
from tierwatch_lab.drills import build_options, run_drill, wait_until_watched
from tierwatch_lab.drills_faults import FAULT_DRILLS, MAX_ACK_GAP, PARTITION_DRILLS, watcher_partition
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scenario", [s for s in FAULT_DRILLS if s not in PARTITION_DRILLS])
def test_fault_drill(stack: Stack, scenario: str) -> None:
    result = run_drill(scenario, stack=stack, timeout=120)
    report = result.render()
    print("\n" + report + f"\n  checker: {result.faults}")
    assert result.recovered, report
    assert result.acked > 0 and result.lost == 0, report
    assert all(count == 1 for count in result.primaries.values()), report
    for engine, check in result.faults.items():
        assert check["acked_lost"] == 0, (engine, report)
        assert check["double_primary_s"] == 0, (engine, report)
    events = [what for _, what in result.timeline]
    assert any("rejoin" in what and "succeeded" in what for what in events), report


def test_watcher_partition_promotes_nothing_and_leaves_no_namespace() -> None:
    result = run_drill("watcher-partition", timeout=120)  # its own stack, closed before the asserts
    report = result.render()
    print("\n" + report + f"\n  checker: {result.faults}")
    assert result.recovered, report
    assert result.acked > 0 and result.lost == 0, report
    assert result.primaries == {"redis": 1, "postgres": 1}, report
    for engine, check in result.faults.items():
        extra = check["extra"]
        assert extra["primary_kept"], (engine, report)
        assert extra["failover_actions"] == 0, (engine, report)
        assert "firing" not in extra["failover_alerts"].values(), (engine, report)
        assert extra["cut_s"] >= 15, (engine, report)  # detection + the 5 s window + 10 s
        assert extra["max_ack_gap_s"] <= MAX_ACK_GAP, (engine, report)
        assert check["acked_lost"] == 0 and check["double_primary_s"] == 0, (engine, report)
    events = [what for _, what in result.timeline]
    assert any(what.startswith("detected: watcher-1 sees both primaries down") for what in events), report
    assert any("sees both primaries up again" in what for what in events), report
    (namespace,) = {m for what in events for m in re.findall(r"namespace (twv-[0-9a-f]+)", what)}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert namespace not in listed and namespace.replace("-", "") + "h" not in links


def test_a_majority_of_watchers_cut_off_fires_but_the_live_check_refuses_the_promotion(
    stack: Stack,
) -> None:
    """Two of three vantage points cut off: a quorum, so RedisMasterDown and PostgresPrimaryDown fire;
    the recovery service still reaches the primaries (and their replicas still see them), so both
    actions refuse and nothing is promoted."""
    demo = build(stack, **build_options("watcher-partition"))
    wait_until_watched(demo)
    result = watcher_partition(demo, time.time() + 120, ("watcher-1", "watcher-2"))
    report = result.render()
    print("\n" + report + f"\n  checker: {result.faults}")
    assert not result.recovered, report  # the drill's own verdict: alerts fired, actions started
    assert result.primaries == {"redis": 1, "postgres": 1}, report
    for engine, check in result.faults.items():
        extra = check["extra"]
        assert extra["primary_kept"], (engine, report)
        assert "firing" in extra["failover_alerts"].values(), (engine, report)
        assert extra["outcomes"], (engine, report)
        assert all(": refused (" in outcome for outcome in extra["outcomes"]), (engine, report)
        assert check["acked_lost"] == 0 and check["double_primary_s"] == 0, (engine, report)
