"""Side-by-side benchmark: tierwatch's PostgresProbe vs Debian's prometheus-postgres-exporter.

Starts a primary, two replicas and a DR replica (tierwatch.lab.stack.postgres), then for the same
duration and interval:
  * one prometheus-postgres-exporter per server (what its docs and the Debian service set up:
    DATA_SOURCE_NAME in the environment, default collectors, plus the ``pg_replication`` lag query
    from its example queries.yaml), scraped over HTTP every interval;
  * one tierwatch worker process probing all four servers concurrently every interval and rendering
    the samples as Prometheus text, so its CPU is isolated from this driver.
The first half runs a write load with replay paused on pg-3, the second half is idle.

Reports CPU ms per target-probe (utime+stime from /proc/<pid>/stat, measured from "ready" to the
end; per scrape for postgres_exporter), peak RSS (VmHWM), new server connections per role (from
log_connections), and the lag values both tools report at the end of each phase.

    python bench/postgres_bench.py [--duration 60] [--interval 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

EXPORTER = "prometheus-postgres-exporter"
EXPORTER_ROLE = "pgexporter"
SERVERS = ("pg-1", "pg-2", "pg-3", "pg-dr")
PAUSED = "pg-3"
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


def cpu_ms(pid: int) -> float:
    """utime+stime of a process, in milliseconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a process, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------------------------------
# tierwatch worker (runs in its own process)


def worker() -> None:
    """Probe the targets given on stdin every interval; print lag samples and exit on stdin EOF."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from tierwatch.config import ClusterConfig, Secret
    from tierwatch.probes.base import Observation, TargetInfo
    from tierwatch.probes.postgres import PostgresProbe

    spec = json.loads(sys.stdin.readline())
    cluster = ClusterConfig.model_validate(spec["cluster"])
    secret = Secret(spec["password"])
    probes = [
        PostgresProbe(TargetInfo("postgres", cluster, target, secret, spec["timeout"]))
        for target in cluster.targets
    ]
    latest: dict[str, Observation] = {}

    class Render:
        def collect(self) -> Any:
            families: dict[str, Any] = {}
            for name, obs in latest.items():
                target = next(t for t in cluster.targets if t.name == name)
                base = ["postgres", cluster.name, name, target.region]
                for sample in obs.samples:
                    fam = families.get(sample.spec.name)
                    if fam is None:
                        cls = CounterMetricFamily if sample.spec.kind == "counter" else GaugeMetricFamily
                        fam = cls(sample.spec.name, sample.spec.help, labels=list(sample.spec.all_labels))
                        families[sample.spec.name] = fam
                    fam.add_metric([*base, *sample.labels], sample.value)
            return iter(families.values())

    registry = CollectorRegistry()
    registry.register(Render())  # type: ignore[arg-type]

    async def run(duration: float, interval: float) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        start = time.monotonic()
        rounds = 0
        while time.monotonic() - start < duration:
            results = await asyncio.gather(*(p.probe() for p in probes), return_exceptions=True)
            for probe, result in zip(probes, results, strict=True):
                if isinstance(result, BaseException):
                    await probe.reset()
                else:
                    latest[probe.info.name] = result
            generate_latest(registry)
            records.append({"t": time.time(), "lag": lag_values(latest)})
            rounds += 1
            await asyncio.sleep(max(0.0, start + rounds * interval - time.monotonic()))
        for probe in probes:
            await probe.close()
        return records

    print("ready", flush=True)
    duration, interval = map(float, sys.stdin.readline().split())
    records = asyncio.run(run(duration, interval))
    print(json.dumps({"rounds": len(records), "records": records}), flush=True)
    sys.stdin.read()


def lag_values(latest: dict[str, Any]) -> dict[str, float]:
    """The lag samples of tierwatch's latest observations, keyed like 'pg-3 seconds'."""
    out: dict[str, float] = {}
    for name, obs in latest.items():
        for sample in obs.samples:
            if sample.spec.name == "tierwatch_replication_lag_seconds":
                out[f"{name} seconds"] = sample.value
            elif sample.spec.name == "tierwatch_replication_lag_bytes":
                out[f"{name} bytes"] = sample.value
            elif sample.spec.name == "tierwatch_pg_standby_lag_bytes" and sample.labels[1] == "replay":
                out[f"{name}->{sample.labels[0]} replay bytes"] = sample.value
    return out


# ---------------------------------------------------------------------------------------------
# driver


def exporter_lag(text: str, server: str) -> dict[str, float]:
    """postgres_exporter's lag series from one scrape, keyed like lag_values()."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if re.match(r"pg_replication_lag(\{[^}]*\})? ", line):
            if server != "pg-1":
                out[f"{server} seconds"] = float(line.split()[-1])
        elif line.startswith("pg_stat_replication_pg_wal_lsn_diff{"):
            app = re.search(r'application_name="([^"]*)"', line)
            out[f"{server}->{app.group(1) if app else '?'} replay bytes"] = float(line.split()[-1])
    return out


def count_connections(log: Path, offset: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode(errors="replace").splitlines():
            match = re.search(r"connection authorized: user=(\S+)", line)
            if match and "replication connection" not in line:
                counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def closest(records: list[tuple[float, dict[str, float]]], when: float) -> dict[str, float]:
    before = [values for t, values in records if t <= when]
    return before[-1] if before else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    results = bench(args.duration, args.interval)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def bench(duration: float, interval: float) -> dict[str, Any]:
    from psycopg import sql as pgsql

    from tierwatch.lab.stack import Stack, free_port
    from tierwatch.lab.stack.ports import port_open
    from tierwatch.lab.stack.postgres import start_primary, start_replica

    with Stack() as stack:
        settings = {"log_connections": "on"}
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
        primary.sql("CREATE TABLE bench_load (id bigserial, payload text)")
        for name in SERVERS[1:]:
            servers[name].wait_caught_up()
        queries = stack.path("postgres_exporter_queries.yaml")
        queries.write_text(EXPORTER_QUERIES)

        exporters: dict[str, tuple[Any, int]] = {}
        for name, server in servers.items():
            port = free_port()
            env = dict(os.environ)
            env["DATA_SOURCE_NAME"] = (
                f"postgresql://{EXPORTER_ROLE}:{password}@127.0.0.1:{server.port}/postgres?sslmode=disable"
            )
            proc = stack.spawn(
                f"postgres_exporter-{name}",
                [EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}"],
                env=env,
            )
            exporters[name] = (proc, port)
        for name, (proc, port) in exporters.items():
            deadline = time.monotonic() + 10
            while not port_open(port):
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres_exporter for {name} did not listen")
                time.sleep(0.05)

        cluster = {
            "name": "main-db",
            "tier": "postgres",
            "password_env": "PG_PASSWORD",
            "targets": [
                {
                    "name": n,
                    "region": "failover" if n == "pg-dr" else "primary",
                    "url": s.dsn_without_password,
                }
                for n, s in servers.items()
            ],
        }
        tw = subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert tw.stdin is not None and tw.stdout is not None
        tw.stdin.write(json.dumps({"cluster": cluster, "password": password, "timeout": 2.0}) + "\n")
        tw.stdin.flush()
        if tw.stdout.readline().strip() != "ready":
            raise RuntimeError("tierwatch worker did not start")

        log_offsets = {n: stack.path("logs", f"{n}.log").stat().st_size for n in servers}
        cpu_start = {n: cpu_ms(p.pid) for n, (p, _) in exporters.items()}
        tw_cpu_start = cpu_ms(tw.pid)
        started = time.time()
        tw.stdin.write(f"{duration} {interval}\n")
        tw.stdin.flush()

        stop_load = threading.Event()
        servers[PAUSED].sql("SELECT pg_wal_replay_pause()")
        load = threading.Thread(target=write_load, args=(primary, stop_load), daemon=True)
        load.start()

        scrapes = 0
        exporter_records: list[tuple[float, dict[str, float]]] = []
        mid = started + duration / 2
        begin = time.monotonic()
        phase_two = False
        while time.monotonic() - begin < duration:
            if not phase_two and time.time() >= mid:
                stop_load.set()
                load.join()
                servers[PAUSED].sql("SELECT pg_wal_replay_resume()")
                phase_two = True
            values: dict[str, float] = {}
            for name, (_, port) in exporters.items():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                    values.update(exporter_lag(resp.read().decode(), name))
            scrapes += 1
            exporter_records.append((time.time(), values))
            time.sleep(max(0.0, begin + scrapes * interval - time.monotonic()))
        exporter_cpu = {n: cpu_ms(p.pid) - cpu_start[n] for n, (p, _) in exporters.items()}
        exporter_rss = {n: peak_rss_kib(p.pid) for n, (p, _) in exporters.items()}

        report = json.loads(tw.stdout.readline())
        tw_cpu = cpu_ms(tw.pid) - tw_cpu_start
        tw_rss = peak_rss_kib(tw.pid)
        tw.stdin.close()
        tw.wait(10)
        connections = {n: count_connections(stack.path("logs", f"{n}.log"), log_offsets[n]) for n in servers}

    tw_records = [(r["t"], r["lag"]) for r in report["records"]]
    tw_probes = report["rounds"] * len(SERVERS)
    return {
        "duration_s": duration,
        "interval_s": interval,
        "tierwatch": {
            "target_probes": tw_probes,
            "cpu_ms_total": round(tw_cpu, 1),
            "cpu_ms_per_target_probe": round(tw_cpu / tw_probes, 3),
            "peak_rss_mib": round(tw_rss / 1024, 1),
            "new_connections": sum(c.get("tierwatch", 0) for c in connections.values()),
        },
        "postgres_exporter": {
            "processes": len(exporters),
            "scrapes_per_process": scrapes,
            "cpu_ms_total": round(sum(exporter_cpu.values()), 1),
            "cpu_ms_per_scrape": round(sum(exporter_cpu.values()) / (scrapes * len(exporters)), 3),
            "peak_rss_mib_per_process": round(max(exporter_rss.values()) / 1024, 1),
            "peak_rss_mib_total": round(sum(exporter_rss.values()) / 1024, 1),
            "new_connections": sum(c.get(EXPORTER_ROLE, 0) for c in connections.values()),
        },
        "lag_end_of_load_phase": {
            "tierwatch": closest(tw_records, mid - 0.05),
            "postgres_exporter": closest(exporter_records, mid - 0.05),
        },
        "lag_end_of_idle_phase": {
            "tierwatch": closest(tw_records, started + duration),
            "postgres_exporter": closest(exporter_records, started + duration),
        },
    }


def write_load(primary: Any, stop: threading.Event) -> None:
    """Small write transactions on one connection until ``stop`` is set."""
    with primary.connect() as conn:
        while not stop.is_set():
            conn.execute(
                "INSERT INTO bench_load (payload) SELECT repeat('x', 100) FROM generate_series(1, 50)"
            )
            stop.wait(0.02)


if __name__ == "__main__":
    main()
