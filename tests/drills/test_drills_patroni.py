"""The ``pg-primary-patroni`` drill (tierwatch_lab/drills_patroni.py): with Patroni in charge, killing the
leader's node ends with Patroni's new leader taking the writes through the write LB, moved there by
the whole chain (exporter → Prometheus → Alertmanager → recovery service) after Patroni's election,
with no acknowledged write lost and the kit never promoting anything itself."""

from __future__ import annotations

import pytest

from tierwatch_lab.drills_patroni import run_patroni_drill
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def test_patroni_promotes_and_the_chain_moves_the_writes(stack: Stack) -> None:
    result = run_patroni_drill(stack, timeout=120)
    report = result.render()
    print("\n" + report + f"\n  promotion: {result.faults['promotion']}")
    assert result.recovered, report
    assert result.acked > 0 and result.lost == 0, report
    assert result.primaries == {"postgres": 1}, report
    promotion = result.faults["promotion"]
    assert promotion["patroni_promoted_itself"], promotion
    assert promotion["kit_elected"] == promotion["new_leader"] != promotion["old_leader"], promotion
    assert not promotion["kit_promoted"] and not promotion["kit_repointed"], promotion
    events = [what for _, what in result.timeline]
    assert any(what.startswith("alert:") for what in events), report
    assert any(what.startswith("action: pg_promote succeeded") for what in events), report
    # Patroni moved the primary first; the chain moved the writes after
    at = {what.split(":")[0]: t for t, what in sorted(result.timeline, reverse=True)}
    assert at["patroni"] <= at["recovered"], report
