"""Side by side, in one run: ``tierwatch serve`` probing PostgreSQL targets vs Debian's
prometheus-postgres-exporter, one exporter process per target, at the same interval.

Servers: a primary (archiving on), two streaming replicas and a DR replica (tierwatch_lab.stack.postgres),
PostgreSQL 15, ``log_connections=on``, ``max_connections`` raised for the bench. The primary gets
``--databases`` databases ``bench_000``...; target ``(k, server)`` is database ``bench_k`` on that
server, so there are 4 x databases targets, each its own connection and probe query. Cluster k of the
tierwatch config holds the four targets of database k (the first cluster's targets are named like the
servers, pg-1 ... pg-dr, so the primary's standby rows are attributed to them; the others' are not).

- tierwatch: ``python -m tierwatch serve`` (the real monitor and /metrics path), role ``tierwatch``.
- postgres_exporter 0.11.1 (no multi-target mode in this version; several DSNs in one process share
  one ``server`` label per host:port, so 50 databases of one server would collide): one process per
  target, as its Debian service sets it up (``DATA_SOURCE_NAME``, default collectors, plus the
  ``pg_replication`` query of its example queries.yaml), role ``pgexporter`` (pg_monitor).
- A driver process (side_by_side.py's, CPU not counted) plays Prometheus: every interval one
  ``GET /metrics`` per exporter process at a fixed offset in the interval, one of tierwatch.
- Load: 50 small rows inserted every 100 ms on the primary for the whole run.

After a warm-up, over a window of whole intervals: CPU ms per target-probe (tierwatch, per
tierwatch_probes_total) and per scrape (postgres_exporter, all processes' CPU over their scrapes),
utime+stime from /proc/<pid>/stat; peak RSS (VmHWM); new server connections per role in the window
(``connection authorized`` lines); series and bytes per target.

New connections per role are counted from ``connection authorized`` lines; each postgres_exporter
process connects with its own ``application_name``, so a process's reconnection (it had connected
before the window) is told from its first connections (its first scrape fell in the window).

Run: ``python bench/postgres_bench.py --databases 50 --output bench/results/postgres-200.json``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from psycopg import sql as pgsql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage
from side_by_side import (
    Http,
    Window,
    add_driver_arguments,
    argument_parser,
    cpu_fields,
    cpu_seconds,
    driver_fields,
    driver_records,
    run_fields,
    sample_fields,
    scrape_fields,
    start_driver,
    tierwatch_config_head,
    tierwatch_fields,
    vm_hwm_mib,
    write_results,
)
from side_by_side import print_table as print_side_by_side

from tierwatch_lab.stack import Stack, free_port
from tierwatch_lab.stack.ports import port_open
from tierwatch_lab.stack.postgres import PgServer, start_primary, start_replica
from tierwatch_lab.stack.tierwatch import start_exporter

EXPORTER = "prometheus-postgres-exporter"
EXPORTER_ROLE = "pgexporter"
SERVERS = ("pg-1", "pg-2", "pg-3", "pg-dr")
# The replica lag query of postgres_exporter's example queries.yaml (the one its README points to).
EXPORTER_QUERIES = """\
pg_replication:
  query: "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 ELSE GREATEST (0, EXTRACT(EPOCH FROM (now() - \
pg_last_xact_replay_timestamp()))) END AS lag"
  master: true
  metrics:
    - lag:
        usage: "GAUGE"
        description: "Replication lag behind master in seconds"
"""


def connections_logged(
    logs: list[Path], start: dict[Path, int], end: dict[Path, int]
) -> list[tuple[str, str]]:
    """(user, application_name) of each ``connection authorized`` line between the byte offsets
    ``start`` and ``end`` of each server log (replication connections aside)."""
    found = []
    for log in logs:
        with open(log, "rb") as f:
            f.seek(start[log])
            text = f.read(end[log] - start[log]).decode(errors="replace")
        for line in text.splitlines():
            match = re.search(r"connection authorized: user=(\S+)(?:.*application_name=(\S+))?", line)
            if match and "replication connection" not in line:
                found.append((match.group(1), match.group(2) or ""))
    return found


def connection_fields(
    before: list[tuple[str, str]], during: list[tuple[str, str]], user: str
) -> dict[str, Any]:
    """New connections of ``user`` in the window, told apart by the connecting process's
    application_name: reconnections of a process that had connected before the window, and first
    connections (a process whose first scrape fell in the window: the driver or the exporter late)."""
    seen = {app for u, app in before if u == user}
    mine = [app for u, app in during if u == user]
    again = [app for app in mine if app in seen]
    return {
        "processes_connected_before_window": len(seen - {""}),
        "new_connections": len(mine),
        "reconnections": len(again),
        "processes_reconnecting": len(set(again)),
        "first_connections": len(mine) - len(again),
    }


def target_name(k: int, server: str) -> str:
    """Cluster 0's targets are named like the servers (standby rows match them); others c<k>-<server>."""
    return server if k == 0 else f"c{k:03d}-{server}"


def tierwatch_config(
    servers: dict[str, PgServer], databases: int, interval: float, password_file: Path
) -> str:
    """One postgres cluster per database, holding its four targets."""
    lines = tierwatch_config_head(interval)
    for k in range(databases):
        lines += [
            f"  - name: db-{k:03d}",
            "    tier: postgres",
            f"    password_file: {password_file}",
            "    targets:",
        ]
        for name, server in servers.items():
            region = "failover" if name == "pg-dr" else "primary"
            url = f"postgresql://tierwatch@127.0.0.1:{server.port}/bench_{k:03d}"
            lines.append(f'      - {{name: {target_name(k, name)}, region: {region}, url: "{url}"}}')
    return "\n".join(lines) + "\n"


def write_load(primary: PgServer, stop: threading.Event) -> None:
    """Small write transactions on one connection until ``stop`` is set."""
    with primary.connect() as conn:
        while not stop.is_set():
            conn.execute(
                "INSERT INTO bench_load (payload) SELECT repeat('x', 100) FROM generate_series(1, 50)"
            )
            stop.wait(0.1)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run both sides at once, measure over the window; return the results."""
    interval: float = args.interval
    databases: int = args.databases
    machine_load = LoadAverage()
    with Stack(keep=args.keep) as stack:
        settings = {"log_connections": "on", "max_connections": str(3 * databases + 40)}
        primary = start_primary(stack, "pg-1", archive=True, settings=settings)
        servers = {"pg-1": primary}
        for name in SERVERS[1:]:
            servers[name] = start_replica(stack, primary, name, settings=settings)
        password = primary.monitor_password
        primary.sql(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                pgsql.Identifier(EXPORTER_ROLE), pgsql.Literal(password)
            )
        )
        for k in range(databases):
            primary.sql(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(f"bench_{k:03d}")))
        primary.sql("CREATE TABLE bench_load (id bigserial, payload text)")
        for name in SERVERS[1:]:
            servers[name].wait_caught_up()
        stop_load = threading.Event()
        load = threading.Thread(target=write_load, args=(primary, stop_load), daemon=True)
        load.start()

        queries = stack.path("postgres_exporter_queries.yaml")
        queries.write_text(EXPORTER_QUERIES)
        print(f"starting {4 * databases} postgres_exporter ...", file=sys.stderr)
        exporters: list[tuple[Any, int]] = []
        for k in range(databases):
            for name, server in servers.items():
                port = free_port()
                env = dict(os.environ)
                env["DATA_SOURCE_NAME"] = (
                    f"postgresql://{EXPORTER_ROLE}:{password}@127.0.0.1:{server.port}/bench_{k:03d}"
                    f"?sslmode=disable&application_name=pgx-{target_name(k, name)}"
                )
                argv = [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}"]
                exporters.append((stack.spawn(f"pgx-{target_name(k, name)}", argv, env=env), port))
        deadline = time.monotonic() + 60
        for proc, port in exporters:
            while not port_open(port):
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError("postgres_exporter did not listen")
                time.sleep(0.05)

        password_file = stack.path("pg-password")
        password_file.write_text(password)
        password_file.chmod(0o600)
        config = stack.path("tierwatch.yml")
        config.write_text(tierwatch_config(servers, databases, interval, password_file))
        tw_proc = start_exporter(stack, config, name="tierwatch")
        tw, tw_http = tw_proc.process, Http(tw_proc.port)
        names = [target_name(k, n) for k in range(databases) for n in servers]

        window = Window.from_now(interval, args.duration, args.warmup)
        spec = window.driver_spec(
            stack.path("driver-records.json"),
            urls=[f"http://127.0.0.1:{port}/metrics" for _, port in exporters],
            ok="\npg_up 1",
            tierwatch_metrics=f"{tw_proc.url}/metrics",
        )
        driver = start_driver(stack, spec, processes=args.drivers, max_lag=args.max_lag)
        window.announce(f"{len(names)} targets on {len(servers)} servers, {args.drivers} drivers")
        logs = [stack.path("logs", f"{n}.log") for n in servers]
        window.sleep_until_first()
        t_cpu0 = time.time()
        tw_cpu0 = cpu_seconds(tw.pid)
        px_cpu0 = sum(cpu_seconds(p.pid) for p, _ in exporters)
        offsets = {log: log.stat().st_size for log in logs}
        body0 = tw_http.get("/metrics")[1]
        time.sleep(max(0.0, window.end - time.time()))
        tw_cpu1 = cpu_seconds(tw.pid)
        px_cpu1 = sum(cpu_seconds(p.pid) for p, _ in exporters)
        t_cpu1 = time.time()
        ends = {log: log.stat().st_size for log in logs}
        before = connections_logged(logs, dict.fromkeys(logs, 0), offsets)
        during = connections_logged(logs, offsets, ends)
        body1 = tw_http.get("/metrics")[1]
        records = driver_records(driver, spec)
        tw_rss = vm_hwm_mib(tw.pid)
        px_rss = [vm_hwm_mib(p.pid) for p, _ in exporters]
        stop_load.set()
        load.join(10)

    scrapes = [s for s in records["scrapes"] if window.holds(s[0])]
    # postgres_exporter scrapes synchronously: a scrape answered with pg_up 1 is one it did.
    px_cpu_scrapes = sum(1 for s in scrapes if t_cpu0 <= s[0] < t_cpu1 and s[2])
    tw_r = tierwatch_fields(
        (body0, body1),
        tw_cpu1 - tw_cpu0,
        t_cpu1 - t_cpu0,
        tw_rss,
        sum(1 for user, _ in during if user == "tierwatch"),
        names,
        records,
    )
    px_r = {
        "processes": len(exporters),
        "scrapes": len(scrapes),
        "scrapes_served_in_cpu_window": px_cpu_scrapes,
        **cpu_fields(px_cpu1 - px_cpu0, max(1, px_cpu_scrapes), "scrape", t_cpu1 - t_cpu0),
        "peak_rss_mib_per_process": round(max(px_rss), 1),
        "peak_rss_mib_total": round(sum(px_rss), 1),
        **scrape_fields(scrapes, records),
        **connection_fields(before, during, EXPORTER_ROLE),
        **sample_fields(records),
    }
    tw_series, px_series = tw_r["series_per_target"], px_r["series_per_target"]
    valid = records["valid"]
    return {
        **run_fields("bench/postgres_bench.py", machine_load),
        "valid": valid,
        "invalid_reasons": records["invalid_reasons"],
        "driver": driver_fields(records),
        "setup": {
            "targets": len(names),
            "servers": len(servers),
            "databases": databases,
            **window.setup(),
            "drivers": args.drivers,
        },
        "results": {"tierwatch": tw_r, "postgres_exporter": px_r},
        "ratios_tierwatch_over_postgres_exporter": {
            "cpu_per_probe": round(tw_r["cpu_ms_per_probe"] / px_r["cpu_ms_per_scrape"], 3)
            if valid
            else None,
            "peak_rss_total": round(tw_r["peak_rss_mib"] / px_r["peak_rss_mib_total"], 3),
            "series_per_target": round(tw_series["mean"] / px_series, 3) if px_series else None,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """The results as a Markdown table on stdout."""
    px = result["results"]["postgres_exporter"]
    rss = f"{px['peak_rss_mib_per_process']} per process, {px['peak_rss_mib_total']} total"
    print_side_by_side(result, "postgres_exporter", "servers", rss, "peak_rss_total")


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--databases", type=int, default=50, help="databases; targets = 4 x databases")
    # 15 s: at 5 s, 200 postgres_exporter processes and the servers' work for them saturate 2 vCPUs.
    parser.add_argument("--interval", type=float, default=15.0, help="seconds (default 15)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="warm-up, in intervals (default 2: every first connection before)",
    )
    add_driver_arguments(parser)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    result = bench(args)
    print_table(result)
    write_results(result, args.output)


if __name__ == "__main__":
    main()
