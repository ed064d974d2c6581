"""The HA drills' promotion count, read from every recovery replica's audit trail."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tierwatch_lab.drills_ha import count_promotions


def trails(tmp_path: Path, *replicas: list[dict[str, Any]]) -> Any:
    """A stand-in for the chain: one state directory per replica with its audit lines."""
    dirs = []
    for index, entries in enumerate(replicas):
        directory = tmp_path / f"state-{index}"
        directory.mkdir(parents=True)
        (directory / "audit.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
        dirs.append(directory)
    return SimpleNamespace(state_dirs=dirs, state_dir=dirs[0])


def rec(ts: float, event: str, key: str = "k1", **fields: Any) -> dict[str, Any]:
    return {"ts": ts, "event": event, "key": key, "action": "pg_promote", **fields}


def test_a_leader_killed_before_its_audit_flush_still_counts_its_failover_once(tmp_path: Path) -> None:
    """Killed -9 between its ledger record and its audit flush, the leader left no point_of_no_return
    line; the new leader's resumed run promoted the recorded server: one failover, not zero (the
    --kill-at chosen sweep counted 0 and hid it)."""
    chain = trails(
        tmp_path,
        [rec(10.0, "action_started"), rec(10.4, "chosen", target="pg-2")],
        [rec(19.0, "action_started", resumed=True), rec(19.5, "promoted", target="pg-2", resumed=True)],
    )
    assert count_promotions(chain, 0.0, "pg_promote") == 1


def test_a_resumed_run_that_finds_the_promotion_done_is_the_same_failover(tmp_path: Path) -> None:
    chain = trails(
        tmp_path,
        [rec(10.0, "point_of_no_return"), rec(10.1, "promoted", target="pg-2")],
        [rec(19.0, "resumed", primary="pg-2")],
    )
    assert count_promotions(chain, 0.0, "pg_promote") == 1


def test_two_servers_promoted_or_two_alerts_past_their_point_of_no_return_count_twice(tmp_path: Path) -> None:
    same_alert = trails(
        tmp_path / "a",
        [rec(10.0, "point_of_no_return"), rec(10.1, "promoted", target="pg-2")],
        [rec(19.5, "promoted", target="pg-3", resumed=True)],
    )
    two_alerts = trails(
        tmp_path / "b",
        [rec(10.0, "point_of_no_return", key="k1")],
        [rec(11.0, "point_of_no_return", key="k2")],
    )
    assert count_promotions(same_alert, 0.0, "pg_promote") == 2
    assert count_promotions(two_alerts, 0.0, "pg_promote") == 2
    assert count_promotions(two_alerts, 10.5, "pg_promote") == 1  # only since ``after``
    assert count_promotions(two_alerts, 0.0, "redis_failover") == 0
