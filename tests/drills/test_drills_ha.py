"""The HA drills of tierwatch_lab.drills_ha that lose a watcher's redundancy during a Redis master failure: an
etcd member, etcd's quorum, a Prometheus replica, an exporter (vantage point); the recovery leader's
are tests/drills/test_drills_leader.py's. Each must end with exactly
one promotion (point of no return of ``redis_failover``, counted over every recovery replica), one
master and no acknowledged write lost. To keep the suite short, one demo stack serves several drills
(the demo's main region has three Redis servers: two failovers per stack; the single-process
reference, `tierwatch demo drill redis-master`, is tests/drills/test_drills.py's)."""

from __future__ import annotations

import time

import pytest

from tierwatch_lab.demo import build
from tierwatch_lab.drills import DrillResult, wait_until_watched
from tierwatch_lab.drills_ha import (
    drill_etcd_one_member,
    drill_etcd_quorum_loss,
    drill_kill_exporter_vantage,
    drill_kill_prometheus_replica,
)
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def _exactly_one_failover(result: DrillResult) -> dict[str, object]:
    report = result.render() + f"\n  figures: {result.faults}"
    print("\n" + report)
    figures = result.faults["ha"]
    assert figures["promotions"] == 1, report
    assert result.recovered, report
    assert result.acked > 0 and result.lost == 0, report
    assert result.primaries == {"redis": 1}, report
    assert figures["recovered_s"] is not None and figures["recovered_s"] > 0, report
    return figures


def test_etcd_member_then_quorum_loss(stack: Stack) -> None:
    demo = build(stack, recovery_replicas=2, backups=False)
    wait_until_watched(demo)

    # (a) the etcd leader member killed 2 s into the failover: the lease survives on the other two
    one = drill_etcd_one_member(demo, time.time() + 90, delay=2.0)
    _exactly_one_failover(one)
    assert any("killed etcd member" in what for _, what in one.timeline), one.render()

    # (b) quorum lost before the next master fails: nobody acts, each replica says so; once quorum
    # is back the accepted alert is finished exactly once
    quorum = drill_etcd_quorum_loss(demo, time.time() + 150, hold=8.0)
    figures = _exactly_one_failover(quorum)
    assert figures["promotions_during_loss"] == 0, quorum.render()
    assert figures["leaders_during_loss"] == [0.0, 0.0], quorum.render()
    assert figures["not_acting"], figures  # the audited reasons (etcd unreachable / no quorum)
    restored = next(at for at, what in quorum.timeline if what == "watcher: etcd quorum restored")
    recovered = next(at for at, what in quorum.timeline if what.startswith("recovered:"))
    assert recovered > restored, quorum.render()  # no write was acknowledged by a master promoted earlier


def test_kill_prometheus_replica_and_exporter_vantage(stack: Stack) -> None:
    demo = build(stack, prometheus_replicas=2, vantages=("a", "b"), backups=False)
    wait_until_watched(demo)

    vantage = drill_kill_exporter_vantage(demo, time.time() + 90, delay=1.0)
    figures = _exactly_one_failover(vantage)
    assert figures["exporter_down_alert"] in ("pending", "firing"), vantage.render()

    prometheus = drill_kill_prometheus_replica(demo, time.time() + 90, delay=1.0)
    _exactly_one_failover(prometheus)
