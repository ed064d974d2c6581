"""The recovery leader's own failures during a Redis master failover, on one demo stack with two
recovery replicas sharing a lease in etcd: first the leader paused (SIGSTOP) right after it moved the
write backend and woken after the other replica resumed the failover and moved the DNS record (it must
not move it again), then the leader killed -9 during the next failover. Each ends with one master, no
acknowledged write lost (the writers by name included) and writes acknowledged again by name."""

from __future__ import annotations

import time

import pytest
from test_drills_ha import _exactly_one_failover

from tierwatch_lab.demo import build
from tierwatch_lab.drills import wait_until_watched
from tierwatch_lab.drills_ha import drill_kill_recovery_leader, drill_stale_dns_leader
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def test_a_stale_leader_wakes_after_the_dns_step_then_the_leader_is_killed(stack: Stack) -> None:
    demo = build(stack, recovery_replicas=2, backups=False)
    wait_until_watched(demo)

    # the leader paused before its DNS step, woken after the other replica moved the record
    stale = drill_stale_dns_leader(demo, time.time() + 120)
    _exactly_one_failover(stale)
    dns = stale.faults["dns"]
    assert dns["paused"] and dns["moved_by_other_replica"], stale.render()
    assert dns["stale_updates"] == 0 and dns["record_names_master"], (stale.render(), dns)
    assert any(what.startswith("recovered by name:") for _, what in stale.timeline), stale.render()

    # then the next master failure, with the leader killed -9 during it: the other replica finishes
    killed = drill_kill_recovery_leader(demo, time.time() + 90)
    report = killed.render()
    print("\n" + report)
    assert killed.recovered and killed.lost == 0 and killed.primaries == {"redis": 1}, report
    assert any(what.startswith("recovered by name:") for _, what in killed.timeline), report
