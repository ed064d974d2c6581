"""The fault drills (tierwatch_lab/drills_faults.py) against the demo stack with its 5 s detection window: a
paused or returning old primary ends as a replica of the promoted server, no acknowledged write is
lost and no two servers ever acknowledged writes at the same time (the drills' own checker). The
watchers cut off in their network namespaces are tests/drills/test_drills_watchers.py's."""

from __future__ import annotations

import pytest

from tierwatch_lab.drills import run_drill
from tierwatch_lab.drills_faults import FAULT_DRILLS, PARTITION_DRILLS
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
