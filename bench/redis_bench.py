"""Side-by-side cost of probing Redis: prometheus-redis-exporter (multi-target) vs tierwatch's RedisProbe.

Starts N redis-server instances, then for the same duration at the same interval:
- scrapes prometheus-redis-exporter's ``/scrape?target=redis://...`` for every target, and
- runs a subprocess that probes every target with RedisProbe (so its CPU is isolated),
and reports, per tool: CPU milliseconds per target-probe (utime+stime from /proc/<pid>/stat, over
the measured window only), connections opened on the targets during the window (INFO
total_connections_received deltas) and peak RSS (VmHWM).

Usage: python bench/redis_bench.py [--targets 24] [--interval 1] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from tierwatch.lab.stack import Stack, free_port, wait_for
from tierwatch.lab.stack.redis import RedisServer, start_redis

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid`` in milliseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / CLK_TCK


def peak_rss_kib(pid: int) -> int:
    """VmHWM of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def connections(servers: list[RedisServer]) -> int:
    """Sum of total_connections_received over ``servers``, not counting the connections this
    benchmark opens to ask (one per server per call, made before the value is read)."""
    return sum(int(s.info("stats")["total_connections_received"]) for s in servers)


def opened(servers: list[RedisServer], before: int, after: int) -> int:
    """Connections opened by the tool between two ``connections`` calls."""
    return after - before - len(servers)


# --- the tierwatch side: a worker process probing every target in a loop --------------------------


async def _worker(ports: list[int], interval: float, rounds: int) -> None:
    from tierwatch.config import ClusterConfig, TargetConfig
    from tierwatch.probes.base import TargetInfo
    from tierwatch.probes.redis import RedisProbe

    targets = [
        TargetConfig(name=f"r{i}", region="primary", url=f"redis://127.0.0.1:{p}")
        for i, p in enumerate(ports)
    ]
    cluster = ClusterConfig(name="bench", tier="redis", targets=targets)
    probes = [RedisProbe(TargetInfo("redis", cluster, t, None, 2.0)) for t in targets]
    failures = 0
    for index in range(rounds + 1):
        started = time.monotonic()
        results = await asyncio.gather(*(p.probe() for p in probes), return_exceptions=True)
        failures += sum(isinstance(r, BaseException) for r in results)
        if index == 0:
            print("ready", flush=True)  # first round (connect, imports) done: measuring starts
            sys.stdin.readline()
            continue
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    for probe in probes:
        await probe.close()
    print(f"done failures={failures}", flush=True)


# --- the benchmark driver -------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    cpu_ms: float
    probes: int
    connections: int
    peak_rss_kib: int
    failures: int

    @property
    def cpu_per_probe(self) -> float:
        return self.cpu_ms / self.probes


def run_tierwatch(servers: list[RedisServer], interval: float, rounds: int) -> Result:
    ports = ",".join(str(s.port) for s in servers)
    cmd = [sys.executable, __file__, "--worker", ports, "--interval", str(interval), "--rounds", str(rounds)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    conns0, cpu0 = connections(servers), cpu_ms(proc.pid)
    proc.stdin.write("\n")
    proc.stdin.flush()
    done = proc.stdout.readline().strip()
    cpu1, rss = cpu_ms(proc.pid), peak_rss_kib(proc.pid)
    conns1 = connections(servers)
    proc.wait(30)
    failures = int(done.partition("failures=")[2] or -1)
    probes = rounds * len(servers)
    return Result("tierwatch RedisProbe", cpu1 - cpu0, probes, opened(servers, conns0, conns1), rss, failures)


def run_redis_exporter(stack: Stack, servers: list[RedisServer], interval: float, rounds: int) -> Result:
    port = free_port()
    proc = stack.spawn(
        "redis_exporter",
        ["prometheus-redis-exporter", "-redis.addr=", f"-web.listen-address=127.0.0.1:{port}"],
    )
    base = f"http://127.0.0.1:{port}/scrape"
    client = httpx.Client(timeout=10)
    wait_for(lambda: client.get(f"http://127.0.0.1:{port}/").status_code == 200, 10, "redis_exporter")
    pool = ThreadPoolExecutor(max_workers=len(servers))

    def scrape_all() -> int:
        urls = [f"{base}?target=redis://127.0.0.1:{s.port}" for s in servers]
        bodies = list(pool.map(lambda u: client.get(u).text, urls))
        return sum("redis_up 1" not in body for body in bodies)

    scrape_all()  # warm-up round, as for tierwatch
    conns0, cpu0 = connections(servers), cpu_ms(proc.pid)
    failures = 0
    for _ in range(rounds):
        started = time.monotonic()
        failures += scrape_all()
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    cpu1, rss = cpu_ms(proc.pid), peak_rss_kib(proc.pid)
    conns1 = connections(servers)
    pool.shutdown()
    client.close()
    probes = rounds * len(servers)
    return Result(
        "prometheus-redis-exporter", cpu1 - cpu0, probes, opened(servers, conns0, conns1), rss, failures
    )


def report(results: list[Result], targets: int, interval: float, rounds: int) -> str:
    lines = [
        f"{targets} redis-server targets, each probed/scraped every {interval:g}s, {rounds} rounds measured",
        "",
        "| tool | CPU ms per target-probe | connections opened on targets | peak RSS (MiB) | failed |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rss = r.peak_rss_kib / 1024
        lines.append(f"| {r.name} | {r.cpu_per_probe:.3f} | {r.connections} | {rss:.1f} | {r.failures} |")
    theirs, ours = results
    lines += [
        "",
        f"CPU ratio tierwatch / redis_exporter: {ours.cpu_per_probe / theirs.cpu_per_probe:.3f}",
        f"peak RSS ratio tierwatch / redis_exporter: {ours.peak_rss_kib / theirs.peak_rss_kib:.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=24)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(_worker([int(p) for p in args.worker.split(",")], args.interval, args.rounds))
        return
    rounds = max(1, int(args.duration / args.interval))
    with Stack() as stack:
        servers = [start_redis(stack, f"redis-{i}") for i in range(args.targets)]
        for index, server in enumerate(servers):  # some data, so INFO is realistic
            client = server.client()
            client.mset({f"key:{index}:{j}": "x" * 50 for j in range(200)})
            client.close()
        results = [
            run_redis_exporter(stack, servers, args.interval, rounds),
            run_tierwatch(servers, args.interval, rounds),
        ]
    print(report(results, args.targets, args.interval, rounds))


if __name__ == "__main__":
    main()
