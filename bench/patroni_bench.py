"""PostgreSQL failover side by side: Patroni against the tierwatch chain (exporter -> Prometheus ->
Alertmanager -> recovery service), on the same topology (a primary and two replicas, synchronous
``ANY 1`` of the replicas, the lab's PostgreSQL settings) on the same machine.

Each run builds a fresh cluster, runs a writer through the write address, applies the fault to the
primary and measures:

- ``seconds``: from the fault until a write is acknowledged again (a commit returned);
- ``lost``: acknowledged writes missing from the primary at the end (after the return);
- ``two_primaries_s``: seconds during which two servers answered as primaries (not in recovery;
  sampled every 0.1 s per server over its unix socket, a sample counts for 1 s at most);
  ``two_acking_s``: seconds during which two servers acknowledged writes (a probe commit returned
  within 0.5 s; bench/primary_sampler.py);
  ``unasked_s``: per server, the seconds whose samples could not be taken (no answer within 2 s: a
  dead, paused or restarting server), counted as not accepting writes;
- ``rejoined_s``: once writes are acknowledged again the old primary returns (``kill``: started
  again; ``pause``: SIGCONT; ``partition``: the cut healed) and this is how long until it streams
  from the new primary.

Patroni: 3 members over a 3-member lab etcd (``synchronous_mode: quorum``: ``ANY 1`` of the
replicas); clients reach the leader through HAProxy, ``option httpchk GET /primary`` on the members'
REST ports, ``inter 1s fall 2 rise 1``, ``on-marked-down shutdown-sessions`` (Patroni's documented
template, with a faster interval). Timings: Patroni's defaults (ttl 30, loop_wait 10, retry_timeout 10)
and the fastest it accepts (ttl 20, loop_wait 1, retry_timeout 3). Chain: bench/failover_bench.py's
setup (one recovery service, a write LB it moves) at the 5 s window and its fastest (1 s), plus
``PostgresSplitBrain -> pg_rejoin`` (pg_rewind) for the returning old primary.

Faults: ``kill`` (SIGKILL Patroni and its postgres / the postgres server), ``pause`` (SIGSTOP them all),
``partition``: the primary (Patroni: the leader member, Patroni and its PostgreSQL, started first so it
leads; chain: pg-1) runs in a network namespace of its own (stack/servernet.py, still at 127.0.0.1 for
everyone) and the cut drops every frame between it and the rest, both ways, silently. Its isolated
clients: a second writer inside the namespace writes straight to it (acknowledged: the commit
returned within 1 s without the warning that the synchronous wait was cancelled; drill_checker's
PgAckWrites), reported apart: ``isolated_acked_after_cut`` (attempts started after the cut) and
``isolated_lost`` (those missing from the final primary). The sampler asks the old primary over its
unix socket, which the cut does not reach: it sees it as its isolated clients do.

Run: ``python bench/patroni_bench.py --fault kill [--runs 3] [--systems patroni-default,...]``;
``--report`` writes bench/results/patroni.md from the JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from failover_bench import start_pg_trio
from primary_sampler import PrimarySampler

from tierwatch_lab.drill_checker import PgAckWrites
from tierwatch_lab.drill_kit import PgWrites, Writer
from tierwatch_lab.drills_partition import InNamespace
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.chain import ChainTiming, audit, start_chain, write_lb_cluster
from tierwatch_lab.stack.etcd import start_etcd_cluster
from tierwatch_lab.stack.haproxy import HAProxy
from tierwatch_lab.stack.patroni import (
    DEFAULT_TIMING,
    FASTEST_TIMING,
    PatroniCluster,
    PatroniMember,
    start_patroni_cluster,
)
from tierwatch_lab.stack.ports import free_port, port_open
from tierwatch_lab.stack.postgres import (
    create_app_role,
    rejoin_commands,
)
from tierwatch_lab.stack.servernet import ServerNet, create_server_net

RESULTS = Path(__file__).parent / "results"
SYSTEMS = ("patroni-default", "patroni-fastest", "chain-5s", "chain-1s")
FAULTS = ("kill", "pause", "partition")
ISOLATED_TABLE = "drill_isolated"
RECOVERY_TIMEOUT = 90.0
REJOIN_TIMEOUT = 120.0
STREAMING = "SELECT count(*) FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'"


def _code_version() -> dict[str, Any]:
    """The commit measured, and whether the chain's code (exporter/) had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "exporter", "rules", "lab"],
        capture_output=True,
        text=True,
    )
    return {"commit": head.stdout.strip(), "uncommitted": dirty.stdout.split("\n")[:40]}


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except (psycopg.Error, OSError):
        return False


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


OUTAGE_GAP = 1.0  # seconds without an acknowledged write that make an outage (writes run every 20 ms)


def first_ack_after_outage(writer: Writer, faulted: float) -> float | None:
    """Start of the first acknowledged write after the first outage that followed the fault. A
    paused primary's backend may still commit a write a few ms after SIGSTOP, then its session hangs
    without any failure recorded: that early acknowledgement is not a recovery (a 2026-12-07 run
    counted it as one, 0.007 s)."""
    before = [at for _, at in writer.acked if at <= faulted]
    previous = before[-1] if before else faulted
    for _, at in writer.acked:
        if at <= faulted:
            continue
        if at - previous >= OUTAGE_GAP:
            return at
        previous = at
    return None


def _measure(
    writer: Writer,
    sampler: PrimarySampler,
    fault: Callable[[], None],
    promoted: Callable[[], bool],
    back: Callable[[], None],
    following: Callable[[], bool],
    current_ids: Callable[[str], set[int] | None],
    ids_of: Callable[[Writer], set[int]],
    isolated: Writer | None = None,
) -> dict[str, Any]:
    """The run's protocol, the same for both systems. ``isolated``: the old primary's isolated
    clients' writer (partition), writing to ISOLATED_TABLE; ``current_ids(table)``: the row ids the
    final primary holds."""
    writers = [writer] if isolated is None else [writer, isolated]
    for w in writers:
        w.start()
    wait_for(lambda: all(len(w.acked) > 20 for w in writers), 60, "writes flowing")
    sampler.prepare()
    sampler.start()
    result: dict[str, Any] = {"load_before": _loadavg()}
    faulted = time.time()
    fault()
    deadline = faulted + RECOVERY_TIMEOUT
    first = None
    while time.time() < deadline and first is None:
        # a write the dying primary still acknowledged (before the first failure was recorded) is not a
        # recovery: wait for another primary first
        if _quietly(promoted):
            first = first_ack_after_outage(writer, faulted)
        time.sleep(0.02)
    result["recovered"] = first is not None
    result["seconds"] = round(first - faulted, 3) if first is not None else None
    returned = time.time()
    back()
    result["rejoined_s"] = None
    deadline = returned + (REJOIN_TIMEOUT if first is not None else 0)  # nothing to follow otherwise
    while time.time() < deadline:
        try:
            if following():
                result["rejoined_s"] = round(time.time() - returned, 3)
                break
        except psycopg.Error:
            pass
        time.sleep(0.1)
    time.sleep(1.0)  # writes after the return land too
    for w in writers:
        w.stop()
    sampler.stop()
    ended = time.time()
    result["two_primaries_s"] = sampler.two_primaries_seconds(faulted, ended)
    result["two_acking_s"] = sampler.two_acking_seconds(faulted, ended)
    result["unasked_s"] = sampler.unasked_seconds(faulted, ended)
    ids = current_ids("drill_writes")
    result["lost"] = len(ids_of(writer) - ids) if ids is not None else None
    result["acked"] = len(writer.acked)
    if isolated is not None:
        after = {n for n, at in isolated.acked if at > faulted}
        ids = current_ids(ISOLATED_TABLE)
        result["isolated_acked"] = len(isolated.acked)
        result["isolated_acked_after_cut"] = len(after)
        result["isolated_lost"] = len(after - ids) if ids is not None else None
        # every acknowledged isolated write, before the cut too (each confirmed by a standby)
        result["isolated_lost_all"] = len({n for n, _ in isolated.acked} - ids) if ids is not None else None
        last = max((at for _, at in isolated.acked), default=None)
        result["isolated_last_ack_s"] = round(last - faulted, 3) if last is not None else None
    result["load_after"] = _loadavg()
    result["faulted_at"] = faulted
    return result


# --- Patroni -----------------------------------------------------------------------------------------


def _patroni_lb(stack: Stack, cluster: PatroniCluster) -> HAProxy:
    """HAProxy in front of the members, routing to the one whose REST API answers 200 to /primary."""
    port = free_port()
    directory = stack.directory("haproxy", "lb-patroni")
    sock = directory / "admin.sock"
    cfg = directory / "haproxy.cfg"
    lines = [
        "global",
        f"  stats socket {sock} mode 600 level admin",
        "defaults",
        "  mode tcp",
        "  timeout connect 1s",
        "  timeout client 1m",
        "  timeout server 1m",
        "  timeout check 1s",
        "frontend fe_write",
        f"  bind 127.0.0.1:{port}",
        "  default_backend be_pg_write",
        "backend be_pg_write",
        "  retries 0",
        "  option httpchk GET /primary",
        "  http-check expect status 200",
        "  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions",
        *(f"  server {m.name} 127.0.0.1:{m.pg_port} check port {m.rest_port}" for m in cluster.members),
    ]
    cfg.write_text("\n".join(lines) + "\n")
    proc = stack.spawn("lb-patroni", ["haproxy", "-db", "-f", str(cfg)])
    wait_for(lambda: proc.check_alive() or port_open(port), 10, "haproxy lb-patroni")
    return HAProxy("lb-patroni", port, sock, cfg, proc)


def run_patroni(timing: dict[str, int], fault: str) -> dict[str, Any]:
    with Stack() as stack:
        etcd = start_etcd_cluster(stack, 3)
        net = create_server_net(stack) if fault == "partition" else None
        nets = {"pg-1": net} if net is not None else None
        cluster = start_patroni_cluster(stack, etcd, 3, **timing, synchronous_mode="quorum", nets=nets)
        leader = cluster.wait_leader(60)
        if net is not None and leader.name != "pg-1":
            raise RuntimeError(f"{leader.name} leads, not pg-1 (the member in namespace {net.namespace})")
        app = create_app_role(leader, "app")  # type: ignore[arg-type] - only .connect() is used
        with leader.connect() as conn:
            for table in ("drill_writes", ISOLATED_TABLE):
                conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
                conn.execute(f"GRANT INSERT, SELECT ON {table} TO app")
        cluster.wait_streaming(timeout=60)
        # steady state: Patroni lists both replicas as quorum standbys (its /sync key); before that,
        # none may be promoted and a dead leader is never replaced
        wait_for(lambda: _quorum_standbys(cluster) == 2, 120, "both replicas quorum standbys")
        lb = _patroni_lb(stack, cluster)
        wait_for(lambda: "UP" in _server_states(lb).get(leader.name, ""), 30, "the LB to see the leader")
        pg = PgWrites(lb.port, app)
        writer = Writer(pg)
        sampler = PrimarySampler({m.name: m.connect for m in cluster.members})
        old = leader
        isolated = _isolated_writer(net, old.pg_port, app)

        def leader_now() -> PatroniMember | None:
            return cluster.leader(ask_last=old)

        def back() -> None:
            if net is not None:
                net.heal()
            elif fault == "kill":
                cluster.start_member(old)
            else:
                old.resume()

        def following() -> bool:
            new = leader_now()
            if new is None or new is old or not old.in_recovery():
                return False
            with new.connect() as conn:
                row = conn.execute(STREAMING, (old.name,)).fetchone()
            return bool(row and row[0])

        def current_ids(table: str) -> set[int] | None:
            new = leader_now()
            if new is None:
                return None
            with new.connect() as conn:
                return {r[0] for r in conn.execute(f"SELECT id FROM {table}").fetchall()}

        def promoted() -> bool:
            new = leader_now()
            return new is not None and new is not old

        faults = {"kill": old.kill, "pause": old.pause, "partition": net.cut if net else old.kill}
        result = _measure(
            writer, sampler, faults[fault], promoted, back, following, current_ids, pg.ids, isolated
        )
        new = leader_now()
        result["new_primary"] = new.name if new else None
        result.pop("faulted_at")
        return result


def _isolated_writer(net: ServerNet | None, port: int, app_password: str) -> Writer | None:
    """The old primary's isolated clients (partition): a writer in ``net``'s namespace writing to
    127.0.0.1:``port`` there."""
    if net is None:
        return None
    return Writer(InNamespace(net, PgAckWrites(port, app_password, ISOLATED_TABLE)))


def _quorum_standbys(cluster: PatroniCluster) -> int:
    members = (cluster.status() or {}).get("members", [])
    return sum(1 for m in members if m.get("role") in ("quorum_standby", "sync_standby"))


def _server_states(lb: HAProxy) -> dict[str, str]:
    lines = lb.command("show servers state be_pg_write").splitlines()
    states: dict[str, str] = {}
    for line in lines[2:]:
        fields = line.split()
        if len(fields) > 5:
            states[fields[3]] = "UP" if fields[5] == "2" else fields[5]
    return states


# --- the tierwatch chain -----------------------------------------------------------------------------


def _chain_timing(window: float) -> ChainTiming:
    """bench/failover_bench.py's timing at a window, with PostgresSplitBrain at the same ``for``."""
    cadence = "500ms" if window >= 2 else "250ms"
    value = f"{int(window * 1000)}ms"
    alerts = ("PostgresPrimaryDown", "PostgresNoPrimary", "PostgresSplitBrain")
    return ChainTiming(
        probe_interval=cadence,
        probe_timeout="200ms",
        scrape_interval=cadence,
        evaluation_interval=cadence,
        for_values=tuple((a, value) for a in alerts),
        breaker_reset="3s" if window >= 2 else "1500ms",
    )


def run_chain(window: float, fault: str) -> dict[str, Any]:
    with Stack() as stack:
        net = create_server_net(stack) if fault == "partition" else None
        trio = start_pg_trio(stack, net)
        servers, app, lb, clusters = trio.servers, trio.app_password, trio.lb, trio.clusters
        primary = servers["pg-1"]
        recovery = {
            "allow": {
                "PostgresPrimaryDown": "pg_promote",
                "PostgresNoPrimary": "pg_promote",
                "PostgresSplitBrain": "pg_rejoin",
            },
            "clusters": {
                "db": {
                    "write_backend": "be_pg_write",
                    "admin_user": "tierwatch_admin",
                    "admin_password_file": str(stack.path("chain-secrets", "pg-admin")),
                    "rejoin_commands": {"pg-1": rejoin_commands(primary, stack)},
                }
            },
        }
        chain = start_chain(
            stack, clusters, recovery, _chain_timing(window), recovery_only=[write_lb_cluster("write", [lb])]
        )
        wait_for(chain.prometheus.targets_up, 30, "scraping")
        wait_for(lambda: chain.prometheus.value('min(tierwatch_up{tier="postgres"})') == 1, 30, "targets up")
        primary.sql(f"CREATE TABLE {ISOLATED_TABLE} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")
        primary.sql(f"GRANT INSERT, SELECT ON {ISOLATED_TABLE} TO app")
        pg = PgWrites(lb.port, app)
        writer = Writer(pg)
        sampler = PrimarySampler({n: s.connect for n, s in servers.items()})
        isolated = _isolated_writer(net, primary.port, app)

        def new_primary() -> str | None:
            for name, server in servers.items():
                if name == "pg-1":
                    continue
                try:
                    if not server.in_recovery():
                        return name
                except psycopg.Error:
                    continue
            return None

        def back() -> None:
            if net is not None:
                net.heal()
            elif fault == "kill":
                primary.process.start()
            else:
                primary.process.resume()

        def following() -> bool:
            name = new_primary()
            if name is None or not primary.in_recovery():
                return False
            return bool(servers[name].scalar(STREAMING, ("pg-1",)))

        def current_ids(table: str) -> set[int] | None:
            name = new_primary()
            if name is None:
                return None
            return {r[0] for r in servers[name].sql(f"SELECT id FROM {table}")}

        faults = {
            "kill": primary.process.kill,
            "pause": primary.process.pause,
            "partition": net.cut if net else primary.process.kill,
        }
        result = _measure(
            writer,
            sampler,
            faults[fault],
            lambda: new_primary() is not None,
            back,
            following,
            current_ids,
            pg.ids,
            isolated,
        )
        result["new_primary"] = new_primary()
        entries = audit(chain)
        accepted = next((e["ts"] for e in entries if e["event"] == "alert_accepted"), None)
        result["alert_at"] = round(accepted - result["faulted_at"], 3) if accepted else None
        result["outcomes"] = [e.get("outcome") for e in entries if e["event"] == "outcome"]
        if any(o != "succeeded" for o in result["outcomes"]):
            # a failed or refused action: its steps, to read why (event names and the secret-free
            # details the audit trail already holds)
            result["audit"] = [
                {k: v for k, v in e.items() if k in ("ts", "event", "target", "detail", "error", "outcome")}
                for e in entries
            ]
        result.pop("faulted_at")
        return result


# --- driver ------------------------------------------------------------------------------------------


def run(system: str, fault: str) -> dict[str, Any]:
    if system == "patroni-default":
        return run_patroni(DEFAULT_TIMING, fault)
    if system == "patroni-fastest":
        return run_patroni(FASTEST_TIMING, fault)
    return run_chain(float(system.removeprefix("chain-").removesuffix("s")), fault)


def summarize(system: str, fault: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    def values(key: str) -> list[float]:
        return [r[key] for r in runs if r.get(key) is not None]

    seconds, rejoined, two = values("seconds"), values("rejoined_s"), values("two_primaries_s")
    return {
        "system": system,
        "fault": fault,
        "runs": len(runs),
        "recovered": sum(1 for r in runs if r["recovered"]),
        "median_s": round(statistics.median(seconds), 2) if seconds else None,
        "min_s": round(min(seconds), 2) if seconds else None,
        "max_s": round(max(seconds), 2) if seconds else None,
        "lost_acked_writes": [r.get("lost") for r in runs],
        "two_primaries_s": two,
        "two_acking_s": [r.get("two_acking_s") for r in runs],
        "rejoined_median_s": round(statistics.median(rejoined), 2) if rejoined else None,
        "rejoined_s": [r.get("rejoined_s") for r in runs],
        **(
            {
                "isolated_acked_after_cut": [r.get("isolated_acked_after_cut") for r in runs],
                "isolated_lost": [r.get("isolated_lost") for r in runs],
            }
            if fault == "partition"
            else {}
        ),
        "raw": runs,
    }


def report(paths: list[Path]) -> str:
    """A markdown table of every cell in ``paths`` (fault, then system order)."""
    cells = []
    for path in paths:
        document = json.loads(path.read_text())
        cells += [{**cell, "date": document["date"]} for cell in document["results"]]
    cells.sort(key=lambda c: (c["fault"], SYSTEMS.index(c["system"]), c["date"]))
    rows = [
        "| fault | system | recovered | writes acknowledged again: median (min-max) | acked writes lost "
        "| two primaries answering (s) | two primaries acknowledging writes (s) "
        "| old primary following again: median (each run) | load avg 1 min (each run) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        loads = ", ".join(f"{r['load_before'][0]:.2f}" for r in cell["raw"])
        seconds = (
            f"{cell['median_s']} s ({cell['min_s']}-{cell['max_s']})"
            if cell["median_s"] is not None
            else "none"
        )
        rows.append(
            f"| {cell['fault']} | {cell['system']} | {cell['recovered']}/{cell['runs']} | {seconds} "
            f"| {', '.join(str(v) for v in cell['lost_acked_writes'])} "
            f"| {', '.join(str(v) for v in cell['two_primaries_s'])} "
            f"| {', '.join(str(v) for v in cell.get('two_acking_s', ['not measured']))} "
            f"| {cell['rejoined_median_s']} s ({', '.join(str(v) for v in cell['rejoined_s'])}) | {loads} "
            f"| {cell['date']} |"
        )
    partition = [cell for cell in cells if cell["fault"] == "partition"]
    if partition:
        rows += [
            "",
            "| partition: system | isolated clients' writes acknowledged after the cut | of those lost "
            "| their last acknowledged write (s after the cut) | samples not taken, old primary (s) |",
            "|---|---|---|---|---|",
        ]
        for cell in partition:
            raw = cell["raw"]
            old = "pg-1"  # the member in the namespace, both systems
            rows.append(
                f"| {cell['system']} | {', '.join(str(r.get('isolated_acked_after_cut')) for r in raw)} "
                f"| {', '.join(str(r.get('isolated_lost')) for r in raw)} "
                f"| {', '.join(str(r.get('isolated_last_ack_s')) for r in raw)} "
                f"| {', '.join(str(r.get('unasked_s', {}).get(old)) for r in raw)} |"
            )
    return "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fault", choices=FAULTS, default="kill")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--output", type=Path)
    parser.add_argument("--report", action="store_true", help="write the markdown table from the JSON files")
    args = parser.parse_args()
    # a stopped bench closes its Stack (Patroni's postgres runs outside the bench's process tree)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.report:
        table = report(sorted(RESULTS.glob("patroni-*.json")))
        print(table)
        return 0
    systems = args.systems.split(",")
    output = args.output or RESULTS / f"patroni-{args.fault}-{'+'.join(systems)}.json"
    summaries = []
    for system in systems:
        if system not in SYSTEMS:
            parser.error(f"unknown system {system}")
        runs = []
        for _ in range(args.runs):
            runs.append(run(system, args.fault))
            print(system, args.fault, json.dumps(runs[-1]), flush=True)
        summaries.append(summarize(system, args.fault, runs))
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_end": _loadavg(),
        "code": _code_version(),
        "results": summaries,
    }
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
