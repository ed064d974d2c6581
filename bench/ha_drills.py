"""The kit's own components killed during a failover, against the single-process chain in the same
run (issue 14: the recovery leader at random moments, ten runs per engine).

``--set leader`` (default): each round runs four drills, each on a fresh demo stack
(``tierwatch_lab.drills``), interleaved so both kinds see the same machine load:

- ``redis-master``: the Redis master is killed; one recovery process (the reference).
- ``kill-recovery-leader``: the same on a demo with two recovery replicas and a lease in a 3-member
  etcd; the leader is killed (kill -9) at a random moment 0-8 s after the master.
- ``pg-primary`` and ``kill-recovery-leader-pg``: the same for the PostgreSQL primary.

For each run: whether it recovered, the promotions (``point_of_no_return`` records of the failover
action in every replica's audit trail: must be exactly 1), acknowledged writes and how many were lost
(must be 0), the time until writes were acknowledged again, and for the leader kills the delay and
where the leader was when it died (no action yet / acting before its point of no return / past it /
done), read from its own audit trail.

``--set watchers``: each round runs ``redis-master`` (the reference) and the drills that kill an
Alertmanager peer, a Prometheus replica, an exporter (vantage point) or etcd members (that drill
fails two masters, one per phase: two promotions).

``--set alertmanager``: each round runs ``redis-master`` (the reference), ``kill-alertmanager-peer``
and ``pause-alertmanager-peer`` (this bench's own drill: SIGSTOP of the first peer, then the Redis
master, SIGCONT once the drill ends; a paused peer still accepts TCP connections and answers nothing,
where a killed one refuses them).

``--kill-window A,B`` draws the leader's kill moment from A-B s after the primary instead of 0-8 s:
the window in which the action runs (the alert arrives about 6 s after the failure), so that kills
land before and past the point of no return.

``--kill-at EVENT,...`` kills the leader instead at each named step of the failover, as soon as its
audit trail records it (``chosen``, ``point_of_no_return``, ``promoted``, ``repointed``,
``write_backend_set``...): one run per step and engine per round, no single-process reference. A
random moment rarely lands in the 30-100 ms between two steps; this lands in each of them.

Run: ``python bench/ha_drills.py [--set leader|watchers] [--rounds 10] [--kill-window A,B]
[--kill-at EVENT,...] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage

from tierwatch_lab.demo import DemoStack, build
from tierwatch_lab.drills import DRILLS, DrillResult, build_options, wait_until_watched
from tierwatch_lab.drills_basic import drill_redis_master
from tierwatch_lab.drills_ha import count_promotions, drill_kill_recovery_leader, recovered_after
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.chain import Chain, audit_trail

SETS = {
    "leader": (("redis-master", "kill-recovery-leader"), ("pg-primary", "kill-recovery-leader-pg")),
    "watchers": (
        (
            "redis-master",
            "kill-alertmanager-peer",
            "kill-prometheus-replica",
            "kill-exporter-vantage",
            "etcd-member-loss",
        ),
    ),
    "alertmanager": (("redis-master", "kill-alertmanager-peer", "pause-alertmanager-peer"),),
}
PG_DRILLS = ("pg-primary", "kill-recovery-leader-pg")
PROMOTIONS = {"etcd-member-loss": 2}  # each drill's expected promotions (default 1)


def pause_alertmanager_peer(demo: DemoStack, deadline: float) -> DrillResult:
    """SIGSTOP the first Alertmanager peer, run the Redis master drill, SIGCONT the peer."""
    assert demo.chain is not None
    peer = demo.chain.alertmanagers[0]
    peer.process.pause()
    paused = time.time()
    try:
        result = drill_redis_master(demo, deadline)
    finally:
        peer.process.resume()
    result.scenario = "pause-alertmanager-peer"
    result.add(paused, f"watcher: paused Alertmanager peer 1 of {len(demo.chain.alertmanagers)} (SIGSTOP)")
    return result


BENCH_DRILLS = {"pause-alertmanager-peer": pause_alertmanager_peer}


def action(scenario: str) -> str:
    return "pg_promote" if scenario in PG_DRILLS else "redis_failover"


def leader_phase(chain: Chain, failed_at: float, killed_at: float, action: str) -> str:
    """Where the killed leader (the replica whose process is dead) was when it died, from the records
    of ``action`` in its own audit trail since the failure, and from the new leader's takeover: a run
    it resumed was past its point of no return in the ledger even if the dead leader's audit trail
    had not recorded that yet (it is flushed after the ledger write)."""
    pairs = list(zip(chain.recoveries, chain.state_dirs, strict=True))
    dead = [d for r, d in pairs if not r.process.running()]
    if len(dead) != 1:
        return "unknown"
    trail = audit_trail(dead[0])
    mine = [e for e in trail if failed_at <= e["ts"] <= killed_at and e.get("action") == action]
    events = {e["event"] for e in mine}
    resumed = {
        str(key)
        for r, d in pairs
        if r.process.running()
        for e in audit_trail(d)
        if e["event"] == "takeover" and e["ts"] >= killed_at
        for key in e.get("resumed") or ()
    }
    if "outcome" in events:
        return "done"
    if "point_of_no_return" in events or resumed & {str(e.get("key")) for e in mine}:
        return "past its point of no return"
    return "acting, before its point of no return" if mine else "no action yet"


def run_one(
    scenario: str, window: tuple[float, float] | None = None, at_event: str | None = None
) -> dict[str, Any]:
    """One drill on a fresh demo (the leader killed at a moment drawn from ``window``, or on its
    ``at_event`` audit record); its figures."""
    stack = Stack()
    started = time.time()
    try:
        demo = build(stack, **build_options(scenario))
        wait_until_watched(demo)
        if (window is not None or at_event) and scenario.startswith("kill-recovery-leader"):
            engine = "postgres" if scenario in PG_DRILLS else "redis"
            delay = random.uniform(*window) if window else None
            result = drill_kill_recovery_leader(
                demo, time.time() + 90, delay=delay, engine=engine, at_event=at_event
            )
        else:
            result = (BENCH_DRILLS.get(scenario) or DRILLS[scenario])(demo, time.time() + 90)
        assert demo.chain is not None
        row: dict[str, Any] = {
            "scenario": f"{scenario}@{at_event}" if at_event else scenario,
            "recovered": result.recovered,
            "promotions": count_promotions(demo.chain, result.failed_at, action(scenario)),
            "acked": result.acked,
            "lost": result.lost,
            "recovered_s": recovered_after(result),
            "detail": result.detail,
        }
        kill = next((at for at, what in result.timeline if "killed the recovery leader" in what), None)
        if kill is not None:
            row["leader_killed_s"] = round(kill - result.failed_at, 2)
            row["leader_phase"] = leader_phase(demo.chain, result.failed_at, kill, action(scenario))
        return row
    except Exception as exc:  # noqa: BLE001 - a broken run is a result to report, not a crash of the bench
        return {"scenario": scenario, "recovered": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        stack.close()
        print(f"  {scenario}: {time.time() - started:.0f}s", file=sys.stderr, flush=True)


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown summary per scenario."""
    lines = [
        "| drill | runs | recovered | promotions as expected | acknowledged writes lost "
        "| recovered after: median (min-max) | leader killed at (phase: runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == scenario]
        if not mine:
            continue
        times = [r["recovered_s"] for r in mine if r.get("recovered_s") is not None]
        spread = f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})" if times else "-"
        phases: dict[str, int] = {}
        for r in mine:
            if "leader_phase" in r:
                phases[r["leader_phase"]] = phases.get(r["leader_phase"], 0) + 1
        kills = [r["leader_killed_s"] for r in mine if "leader_killed_s" in r]
        where = ", ".join(f"{k}: {v}" for k, v in sorted(phases.items()))
        killed = f"{min(kills):.1f}-{max(kills):.1f} s; {where}" if kills else "-"
        lost = sum(r.get("lost", 0) for r in mine)
        acked = sum(r.get("acked", 0) for r in mine)
        lines.append(
            f"| `{scenario}` | {len(mine)} | {sum(r['recovered'] for r in mine)} "
            f"| {sum(r.get('promotions') == PROMOTIONS.get(scenario, 1) for r in mine)} "
            f"| {lost} of {acked} | {spread} | {killed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=sorted(SETS), default="leader")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kill-window", help="A,B: the leader's kill moment, seconds after the primary")
    parser.add_argument("--kill-at", help="EVENT,...: kill the leader on each of these audit records")
    parser.add_argument("--output", type=Path, default=Path("bench/results/ha_drills.json"))
    args = parser.parse_args(argv)
    window = tuple(float(v) for v in args.kill_window.split(",")) if args.kill_window else None
    rows: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}/{args.rounds}", file=sys.stderr, flush=True)
        runs = (
            [(s, None) for group in SETS[args.set] for s in group]
            if not args.kill_at
            else [
                (s, e)
                for e in args.kill_at.split(",")
                for s in ("kill-recovery-leader", "kill-recovery-leader-pg")
            ]
        )
        for scenario, event in runs:
            load = LoadAverage()
            row = run_one(scenario, window, event)  # type: ignore[arg-type]
            rows.append({**row, "load": load.fields()})
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    bad = [
        r
        for r in rows
        if not r["recovered"] or r.get("promotions") != PROMOTIONS.get(r["scenario"], 1) or r.get("lost")
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
