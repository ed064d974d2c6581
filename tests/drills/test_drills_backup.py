"""The backup drills (tierwatch_lab.drills_backup) on one demo stack with backups, in the order that
keeps each honest: ``bad-write`` needs the backups and the archive intact, ``backup-corruption`` then
breaks a backup, ``wal-gap`` the archive."""

from __future__ import annotations

import time

import pytest

from tierwatch_lab.demo import build
from tierwatch_lab.drills import build_options, wait_until_watched
from tierwatch_lab.drills_backup import drill_backup_corruption, drill_bad_write, drill_wal_gap
from tierwatch_lab.stack import Stack

pytestmark = pytest.mark.slow


def test_backup_drills_restore_what_failover_cannot_and_page_on_broken_backups(stack: Stack) -> None:
    demo = build(stack, **build_options("bad-write"))
    wait_until_watched(demo)

    bad_write = drill_bad_write(demo, time.time() + 120)
    report = bad_write.render()
    print("\n" + report + f"\n  figures: {bad_write.faults}")
    assert bad_write.recovered, report
    assert bad_write.acked > 100 and bad_write.lost == 0, report  # every row acknowledged before t0
    events = [what for _, what in bad_write.timeline]
    for replica in ("pg-2", "pg-3", "pg-dr"):  # replication copied the mistake everywhere
        assert any(what.startswith("replicated:") and f" {replica} has lost" in what for what in events), (
            report
        )
    assert bad_write.primaries == {"postgres": 1}, report  # production untouched: the PITR is beside it

    corruption = drill_backup_corruption(demo, time.time() + 120)
    report = corruption.render()
    print("\n" + report + f"\n  figures: {corruption.faults}")
    assert corruption.faults["restore_test_exit"] != 0, report
    assert corruption.recovered, report  # RestoreTestFailed firing and in Alertmanager

    gap = drill_wal_gap(demo, time.time() + 120)
    report = gap.render()
    print("\n" + report + f"\n  figures: {gap.faults}")
    assert gap.recovered, report  # PostgresWalArchiveGap in Alertmanager
    assert gap.faults["restores_attempted"] == 0, report
