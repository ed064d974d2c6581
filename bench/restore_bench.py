"""Restore tests measured: ``tierwatch restore-test`` on the demo's database and on a larger one, and
what reading pgBackRest's report costs the exporter.

For each size a real PostgreSQL primary archives its WAL with pgBackRest into a local repository
(tierwatch_lab.stack.pgbackrest) and gets a heartbeat table:

- ``demo``: the demo's database as ``tierwatch demo`` starts it (an empty cluster plus the heartbeat
  table: what the demo's scheduled restore tests restore);
- ``1gb``: ``pgbench -i -s 64`` (about 1 GB of tables and indexes; pgbench's rows are mostly blank
  padding, which compresses about 30 to 1);
- ``1gb-random``: about 1 GB of rows of random hex text (compresses about 2 to 1): what gzip cannot
  shrink costs the backup and the restore more.

Then a full backup (timed), a heartbeat row written just before each restore test, and ``--runs``
runs of the real command (``python -m tierwatch restore-test --config FILE``): its RTO (restore start
to verified), RPO (restore start minus the newest restored heartbeat), restored bytes as it publishes
them in its textfile, the whole command's wall time and CPU (utime+stime of it and its children:
pgBackRest, the throwaway postgres). The load average before and after each size is recorded.

The exporter's cost: ``--reads`` rounds of what backup_watch runs per cluster and interval (``pgbackrest
info --output=json`` and ``repo-ls`` of the archive, their CPU from the children's rusage) plus its
parsing (tierwatch.probes.pgbackrest, timed in-process), against the 1gb repository; per minute (the
default interval) that is the exporter's extra CPU for one cluster.

Run: ``python bench/restore_bench.py --runs 3 --output bench/results/restore.json``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage, machine

from tierwatch_lab.demo_backups import HEARTBEAT_TABLE, create_heartbeat_table
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.pgbackrest import PgBackRest, archive_now, start_backed_up_primary
from tierwatch_lab.stack.postgres import OS_USER, PgServer, pg_bin_dir

SCALES = {"demo": 0, "1gb": 64, "1gb-random": 0}
RANDOM_ROWS = 7_500_000  # about 1 GB of heap and index


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_config(stack: Stack, primary: PgServer, backrest: PgBackRest) -> tuple[Path, Path]:
    """A config whose ``backups:`` section has the one set; its path and the textfile directory."""
    textfile = stack.directory("textfile")
    pgbackrest: dict[str, Any] = {"stanza": backrest.stanza, "config": str(backrest.config)}
    if os.geteuid() == 0:
        pgbackrest["os_user"] = OS_USER
    document = {
        "clusters": [
            {"name": "main-db", "tier": "postgres",
             "targets": [{"name": "pg-1", "region": "primary", "url": primary.dsn_without_password}]},
        ],
        "backups": {
            "textfile_dir": str(textfile),
            "scratch_dir": str(stack.directory("scratch")),
            "audit_log": str(stack.path("audit.jsonl")),
            "sets": [{
                "name": "main-db", "cluster": "main-db", "pgbackrest": pgbackrest,
                "verify": [{"name": "heartbeat", "query": f"SELECT count(*) FROM {HEARTBEAT_TABLE}",
                            "equals": 1}],
                "heartbeat_table": HEARTBEAT_TABLE, "timeout": "30m",
            }],
        },
    }  # fmt: skip
    path = stack.path("tierwatch.yml")
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, textfile


def textfile_figures(textfile: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    for path in textfile.glob("*.prom"):
        for line in path.read_text().splitlines():
            if line.startswith("tierwatch_restore_test_"):
                name, _, value = line.rpartition(" ")
                figures[name.split("{", 1)[0].removeprefix("tierwatch_restore_test_")] = float(value)
    return figures


def heartbeat(primary: PgServer) -> None:
    """The exporter's heartbeat, then its WAL segment archived (what archive_timeout does in time)."""
    primary.sql(
        f"INSERT INTO {HEARTBEAT_TABLE} (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = now()"
    )
    archive_now(primary)


def measure_size(name: str, scale: int, runs: int, reads: int) -> dict[str, Any]:
    with Stack() as stack:
        primary, backrest = start_backed_up_primary(stack, "pg-1", full_backup=False)
        create_heartbeat_table(primary)
        if scale:
            started = time.monotonic()
            subprocess.run(
                [str(pg_bin_dir() / "pgbench"), "-i", "-q", "-s", str(scale), "-h", str(primary.socket_dir),
                 "-p", str(primary.port), "-U", "postgres", "postgres"],
                user=OS_USER if os.geteuid() == 0 else None, check=True, capture_output=True,
            )  # fmt: skip
            load_s = time.monotonic() - started
        elif name.endswith("-random"):
            started = time.monotonic()
            primary.sql("CREATE TABLE noise (id bigint PRIMARY KEY, a text, b text)")
            primary.sql(
                "INSERT INTO noise SELECT g, md5(g::text || random()::text), md5(random()::text) "
                f"FROM generate_series(1, {RANDOM_ROWS}) AS g"
            )
            load_s = time.monotonic() - started
        else:
            load_s = 0.0
        database_bytes = int(primary.scalar("SELECT pg_database_size('postgres')"))
        started = time.monotonic()
        backrest.backup("full")
        backup_s = time.monotonic() - started
        repository_bytes = sum(f.stat().st_size for f in backrest.repo.rglob("*") if f.is_file())
        config, textfile = write_config(stack, primary, backrest)
        result: dict[str, Any] = {
            "size": name,
            "pgbench_scale": scale,
            "database_bytes": database_bytes,
            "load_seconds": round(load_s, 1),
            "full_backup_seconds": round(backup_s, 2),
            "repository_bytes_after_full": repository_bytes,
            "loadavg_before": os.getloadavg(),
            "runs": [],
        }
        for _ in range(runs):
            heartbeat(primary)
            cpu0, wall0 = children_cpu(), time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "tierwatch", "restore-test", "--config", str(config)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall, cpu = time.monotonic() - wall0, children_cpu() - cpu0
            figures = textfile_figures(textfile)
            result["runs"].append({
                "exit": done.returncode, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                "rto_seconds": figures.get("rto_seconds"), "rpo_seconds": figures.get("rpo_seconds"),
                "restored_bytes": figures.get("restored_bytes"), "success": figures.get("success"),
            })  # fmt: skip
        result["loadavg_after"] = os.getloadavg()
        if reads:
            result["exporter_read"] = measure_reads(backrest, reads)
        return result


def measure_reads(backrest: PgBackRest, reads: int) -> dict[str, Any]:
    """What backup_watch does per interval: the two commands' CPU and wall time, and the parse."""
    from tierwatch.probes import pgbackrest as report

    info = json.loads(backrest.run("info", "--output=json"))
    archive_id = info[0]["archive"][-1]["id"]
    cpu0, wall0 = children_cpu(), time.monotonic()
    outputs: tuple[str, str] = ("", "")
    for _ in range(reads):
        outputs = (
            backrest.run("info", "--output=json"),
            backrest.run("repo-ls", f"archive/{backrest.stanza}/{archive_id}", "--recurse", "--output=json"),
        )
    commands_cpu, commands_wall = children_cpu() - cpu0, time.monotonic() - wall0
    cpu0 = time.process_time()
    for _ in range(reads):
        report.parse_info(outputs[0].encode(), backrest.stanza)
        report.parse_archive_listing(outputs[1].encode())
    parse_cpu = time.process_time() - cpu0
    per_read_ms = (commands_cpu + parse_cpu) / reads * 1000
    return {
        "reads": reads,
        "commands_cpu_ms_per_read": round(commands_cpu / reads * 1000, 2),
        "commands_wall_ms_per_read": round(commands_wall / reads * 1000, 2),
        "parse_cpu_ms_per_read": round(parse_cpu / reads * 1000, 3),
        "info_bytes": len(outputs[0]),
        "repo_ls_bytes": len(outputs[1]),
        "cpu_share_at_1m_interval": round(per_read_ms / 60_000, 6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="demo,1gb,1gb-random")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    load = LoadAverage()
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(),
        "sizes": [
            measure_size(name, SCALES[name], args.runs, args.reads if name == "1gb" else 0)
            for name in args.sizes.split(",")
        ],
    }
    results |= {"machine": machine(), "load": load.fields()}
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
