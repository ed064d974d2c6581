"""Watchers cut off from both primaries (drills_faults.watcher_partition), on one demo stack with three
vantage points, each watcher in a network namespace of its own: first one of three (a minority) is cut
off, which must promote nothing and fire no failover alert; then two of three (a quorum), whose alerts
fire but whose actions the live check refuses, so nothing is promoted. Once the stack is closed no
namespace or veth of the drills is left."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tierwatch_lab.demo import build
from tierwatch_lab.drills import DrillResult, build_options, wait_until_watched
from tierwatch_lab.drills_faults import MAX_ACK_GAP, watcher_partition
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def check_minority(result: DrillResult) -> None:
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


def check_majority(result: DrillResult) -> None:
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


def test_a_minority_of_watchers_cut_off_promotes_nothing_a_majority_is_refused_no_namespace_left() -> None:
    with Stack() as stack:  # closed before the last asserts
        demo = build(stack, **build_options("watcher-partition"))
        wait_until_watched(demo)
        minority = watcher_partition(demo, time.time() + 120, ("watcher-1",))
        check_minority(minority)
        majority = watcher_partition(demo, time.time() + 120, ("watcher-1", "watcher-2"))
        check_majority(majority)
    events = [what for result in (minority, majority) for _, what in result.timeline]
    namespaces = {m for what in events for m in re.findall(r"twv-[0-9a-f]+", what)}
    assert namespaces, events
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    for namespace in namespaces:
        assert namespace not in listed and namespace.replace("-", "") + "h" not in links
