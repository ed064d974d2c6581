"""The drills' writer: when writes count as acknowledged again after a fault."""

from __future__ import annotations

import time

from tierwatch_lab.drill_kit import Writer


def test_writes_still_served_by_the_dying_primary_are_not_a_recovery() -> None:
    """A PostgreSQL backend outlives its killed postmaster for a moment and may still commit: the
    recovery is the first acknowledged write after the outage (a failed write), not that one."""
    outcomes = iter([True, True, False, False, True, True])
    writer = Writer(lambda n: next(outcomes, True), pause=0.0)
    moment = time.time()
    writer.start()
    deadline = time.time() + 5
    while len(writer.acked) < 4 and time.time() < deadline:
        time.sleep(0.01)
    writer.stop()
    numbers = [n for n, _ in writer.acked]
    assert numbers[:4] == [1, 2, 5, 6]
    first = writer.first_ack_after(moment)
    assert first == dict(writer.acked)[5]


def test_without_an_outage_the_first_write_after_the_moment_counts() -> None:
    writer = Writer(lambda n: True, pause=0.0)
    moment = time.time()
    writer.start()
    deadline = time.time() + 5
    while len(writer.acked) < 3 and time.time() < deadline:
        time.sleep(0.01)
    writer.stop()
    assert writer.first_ack_after(moment) == writer.acked[0][1]
