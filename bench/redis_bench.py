"""Side by side, in one run: ``tierwatch serve`` probing N Redis targets vs prometheus-redis-exporter
(multi-target mode) scraped for the same N targets, at the same interval.

- Targets: ``--servers`` redis-server instances (200 small keys each); target i is
  ``redis://127.0.0.1:PORT/DB`` on server ``i % servers``, database ``i // servers``, so more targets
  than servers means several targets (each its own connection and INFO) per server.
- tierwatch: ``python -m tierwatch serve`` (the real monitor, its batching and its /metrics path) with
  the targets in clusters of ``--cluster-size``.
- redis_exporter: Debian's ``prometheus-redis-exporter`` with ``-redis.addr=`` (no default target).
- A driver process (its CPU not counted) plays Prometheus: every interval one
  ``/scrape?target=redis://...`` per target at a fixed offset in the interval (spread like Prometheus
  spreads scrapes), and one ``GET /metrics`` of tierwatch.

After a warm-up, over a window of whole intervals, for each exporter: CPU ms per target-probe
(utime+stime from /proc/<pid>/stat over the probes done in the window: tierwatch_probes_total for
tierwatch, scrapes for redis_exporter), new connections opened on the targets (tierwatch's from its
own sockets; redis_exporter's from the servers' total_connections_received minus tierwatch's and the
bench's own), peak RSS (VmHWM), series and bytes per target.

Run: ``python bench/redis_bench.py --targets 200 --output bench/results/redis-200.json``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import Http, NewConnections, cpu_seconds, machine, metric_sum, percentile, vm_hwm_mib

from tierwatch.lab.stack import ManagedProcess, Stack, free_port, wait_for
from tierwatch.lab.stack.redis import RedisServer, start_redis
from tierwatch.lab.stack.tierwatch import start_exporter

EXPORTER = "prometheus-redis-exporter"


# --------------------------------------------------------------------------- driver (own process)


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Scrape every per-target URL once per interval at its own offset, and tierwatch's /metrics once
    per interval; ``spec['ok']`` is the text a good per-target scrape holds. Returns the records."""
    interval: float = spec["interval"]
    urls: list[str] = spec["urls"]
    n = len(urls)
    scrapes: list[tuple[float, float, bool]] = []  # (scheduled time, latency s, ok)
    tw_scrapes: list[tuple[float, float]] = []
    sample_body = ""
    ok_marker = spec["ok"].encode()
    late: list[float] = []  # how late each request left, seconds (the driver falling behind)
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(timeout=10.0, limits=limits, trust_env=False) as client:
        pending: set[asyncio.Task[None]] = set()

        async def scrape(url: str, when: float) -> None:
            nonlocal sample_body
            began = time.perf_counter()
            late.append(time.time() - when)
            try:
                async with asyncio.timeout(10.0):  # whole request (httpx's is per read)
                    response = await client.get(url)
                ok = response.status_code == 200 and ok_marker in response.content
                if ok and not sample_body:
                    sample_body = response.content.decode()
            except (httpx.HTTPError, TimeoutError):
                ok = False
            scrapes.append((when, time.perf_counter() - began, ok))

        async def scrape_tierwatch(when: float) -> None:
            began = time.perf_counter()
            async with asyncio.timeout(10.0):
                response = await client.get(spec["tierwatch_metrics"])
            response.raise_for_status()
            tw_scrapes.append((when, time.perf_counter() - began))

        events: list[tuple[float, str | None]] = [(interval / 2, None)]
        events += [((i + 0.5) * interval / n, url) for i, url in enumerate(urls)]
        events.sort(key=lambda e: e[0])
        round_start: float = spec["start"]
        while round_start < spec["until"]:
            for offset, url in events:
                when = round_start + offset
                if when >= spec["until"]:
                    break
                await asyncio.sleep(max(0.0, when - time.time()))
                job = asyncio.create_task(scrape_tierwatch(when) if url is None else scrape(url, when))
                pending.add(job)
                job.add_done_callback(pending.discard)
            round_start += interval
        await asyncio.gather(*pending)
    late.sort()
    return {
        "scrapes": scrapes,
        "tierwatch_scrapes": tw_scrapes,
        "sample_body": sample_body,
        "driver_late_p50_p99_max_s": [late[len(late) // 2], late[int(len(late) * 0.99)], late[-1]],
    }


def run_driver(spec_path: Path) -> None:
    """Entry point of the driver process: read the spec, drive, write the records next to it."""
    spec = json.loads(spec_path.read_text())
    Path(spec["out"]).write_text(json.dumps(asyncio.run(drive(spec))))


def start_driver(stack: Stack, spec: dict[str, Any]) -> ManagedProcess:
    """Write ``spec`` and start the driver process on it (``--driver`` of this file)."""
    spec_path = stack.path("driver-spec.json")
    spec_path.write_text(json.dumps(spec))
    return stack.spawn("driver", [sys.executable, str(Path(__file__).resolve()), "--driver", str(spec_path)])


def driver_records(driver: ManagedProcess, spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the driver and read its records."""
    if driver.popen is None or driver.popen.wait(120) != 0:
        raise RuntimeError(f"driver failed:\n{driver.log_tail()}")
    records: dict[str, Any] = json.loads(Path(spec["out"]).read_text())
    return records


def series_per_target(text: str, names: list[str]) -> dict[str, float]:
    """Samples and bytes of a tierwatch exposition that carry each target's label: mean, min, max."""
    counts = dict.fromkeys(names, 0)
    sizes = dict.fromkeys(names, 0)
    for line in text.splitlines():
        if line.startswith("#") or 'target="' not in line:
            continue
        name = line.partition('target="')[2].partition('"')[0]
        if name in counts:
            counts[name] += 1
            sizes[name] += len(line) + 1
    values = list(counts.values())
    return {
        "mean": round(statistics.mean(values), 2),
        "min": min(values),
        "max": max(values),
        "bytes_mean": round(statistics.mean(sizes.values())),
    }


def exposition_series(text: str) -> int:
    """Sample lines of one exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# --------------------------------------------------------------------------- set-up


def target_urls(servers: list[RedisServer], targets: int) -> list[str]:
    """Target i: server i % len(servers), database i // len(servers)."""
    return [f"redis://127.0.0.1:{servers[i % len(servers)].port}/{i // len(servers)}" for i in range(targets)]


def tierwatch_config(urls: list[str], interval: float, cluster_size: int) -> str:
    """A tierwatch config with the targets in Redis clusters of ``cluster_size``."""
    lines = [
        "monitor:",
        f"  interval: {interval:g}s",
        f"  timeout: {min(2.0, interval * 0.8):g}s",
        "log: {level: warning}",
        "clusters:",
    ]
    for first in range(0, len(urls), cluster_size):
        lines += [f"  - name: cache-{first // cluster_size:04d}", "    tier: redis", "    targets:"]
        lines += [
            f'      - {{name: r{i:04d}, region: primary, url: "{urls[i]}"}}'
            for i in range(first, min(first + cluster_size, len(urls)))
        ]
    return "\n".join(lines) + "\n"


def connections(servers: list[RedisServer]) -> int:
    """Sum of total_connections_received over ``servers`` (each call opens one per server itself)."""
    return sum(int(s.info("stats")["total_connections_received"]) for s in servers)


def start_redis_exporter(stack: Stack) -> tuple[ManagedProcess, int]:
    """redis_exporter in multi-target mode (no default address)."""
    port = free_port()
    proc = stack.spawn(EXPORTER, [EXPORTER, "-redis.addr=", f"-web.listen-address=127.0.0.1:{port}"])

    def healthy() -> bool:
        proc.check_alive()
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200

    wait_for(healthy, 15, "redis_exporter")
    return proc, port


def _version(argv: list[str]) -> str:
    import subprocess

    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


# --------------------------------------------------------------------------- the bench


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run both exporters side by side, measure over the window; return the results."""
    interval: float = args.interval
    rounds = max(1, round(args.duration / interval))
    servers_n = min(args.servers, args.targets)
    if args.targets > 16 * servers_n:
        raise SystemExit("at most 16 targets per server (Redis has 16 databases)")
    with Stack(keep=args.keep) as stack:
        print(f"starting {servers_n} redis-server ...", file=sys.stderr)
        servers = [start_redis(stack, f"redis-{i}") for i in range(servers_n)]
        for index, server in enumerate(servers):  # some data, so INFO is realistic
            client = server.client()
            client.mset({f"key:{index}:{j}": "x" * 50 for j in range(200)})
            client.close()
        urls = target_urls(servers, args.targets)
        names = [f"r{i:04d}" for i in range(len(urls))]
        config = stack.path("tierwatch.yml")
        config.write_text(tierwatch_config(urls, interval, args.cluster_size))
        tw_proc = start_exporter(stack, config, name="tierwatch")
        tw, tw_port = tw_proc.process, tw_proc.port
        rx, rx_port = start_redis_exporter(stack)
        tw_http = Http(tw_port)

        start = time.time() + 0.5
        window_start = start + args.warmup * interval
        window_end = window_start + rounds * interval
        spec = {
            "interval": interval,
            "start": start,
            "until": window_end,
            "urls": [f"http://127.0.0.1:{rx_port}/scrape?target={quote(u, safe='')}" for u in urls],
            "ok": "\nredis_up 1",
            "tierwatch_metrics": f"http://127.0.0.1:{tw_port}/metrics",
            "out": str(stack.path("driver-records.json")),
        }
        driver = start_driver(stack, spec)
        print(
            f"{len(urls)} targets on {servers_n} servers, interval {interval:g}s; warm-up "
            f"{args.warmup * interval:g}s, window {rounds * interval:g}s",
            file=sys.stderr,
        )
        time.sleep(max(0.0, window_start - time.time()))
        load0 = os.getloadavg()[0]
        t_cpu0 = time.time()
        tw_cpu0, rx_cpu0 = cpu_seconds(tw.pid), cpu_seconds(rx.pid)
        t_conn0 = time.time()
        conns0 = connections(servers)
        t_conn0 = (t_conn0 + time.time()) / 2
        tw_conns = NewConnections(tw.pid, {s.port for s in servers})
        body0 = tw_http.get("/metrics")[1]
        tw_count0 = metric_sum(body0, "tierwatch_probes_total")
        tw_fail0 = metric_sum(body0, "tierwatch_probe_failures_total")
        tw_late0 = metric_sum(body0, "tierwatch_probe_round_overruns_total")
        while time.time() < window_end + 0.25:
            tw_conns.poll()
            time.sleep(0.2)
        tw_cpu1, rx_cpu1 = cpu_seconds(tw.pid), cpu_seconds(rx.pid)
        load1 = os.getloadavg()[0]
        t_conn1 = time.time()
        conns1 = connections(servers)
        body1 = tw_http.get("/metrics")[1]
        tw_count1 = metric_sum(body1, "tierwatch_probes_total")
        tw_fail1 = metric_sum(body1, "tierwatch_probe_failures_total")
        tw_late1 = metric_sum(body1, "tierwatch_probe_round_overruns_total")
        records = driver_records(driver, spec)
        tw_rss, rx_rss = vm_hwm_mib(tw.pid), vm_hwm_mib(rx.pid)
        rx_version = _version([EXPORTER, "--version"])

    scrapes = [s for s in records["scrapes"] if window_start <= s[0] < window_end]
    rx_cpu_scrapes = sum(1 for s in scrapes if s[0] >= t_cpu0)
    rx_conn_scrapes = sum(1 for s in scrapes if t_conn0 <= s[0] < t_conn1)
    tw_probes = tw_count1 - tw_count0
    opened = conns1 - conns0 - len(servers)  # the second connections() call's own
    tw_series = series_per_target(body1, names)
    rx_series = exposition_series(records["sample_body"])
    tools = {
        "tierwatch": {
            "probes": int(tw_probes),
            "cpu_seconds": round(tw_cpu1 - tw_cpu0, 3),
            "cpu_ms_per_probe": round(1000 * (tw_cpu1 - tw_cpu0) / tw_probes, 3),
            "cores": round((tw_cpu1 - tw_cpu0) / (rounds * interval), 3),
            "peak_rss_mib": round(tw_rss, 1),
            "probes_failed": int(tw_fail1 - tw_fail0),
            "round_overruns": int(tw_late1 - tw_late0),
            "targets_up_at_end": int(metric_sum(body1, "tierwatch_up")),
            "new_connections": tw_conns.count,
            "series_per_target": tw_series,
            "metrics_bytes": len(body1.encode()),
            "metrics_scrape_median_ms": round(
                1000 * statistics.median(s[1] for s in records["tierwatch_scrapes"]), 2
            ),
        },
        "redis_exporter": {
            "scrapes": len(scrapes),
            "cpu_seconds": round(rx_cpu1 - rx_cpu0, 3),
            "cpu_ms_per_scrape": round(1000 * (rx_cpu1 - rx_cpu0) / rx_cpu_scrapes, 3),
            "cores": round((rx_cpu1 - rx_cpu0) / (rounds * interval), 3),
            "peak_rss_mib": round(rx_rss, 1),
            "scrapes_failed": sum(1 for s in scrapes if not s[2]),
            "scrape_latency_median_ms": round(1000 * statistics.median(s[1] for s in scrapes), 2),
            "scrape_latency_p99_ms": round(1000 * percentile([s[1] for s in scrapes], 99), 2),
            "driver_late_p50_p99_max_s": [round(x, 3) for x in records["driver_late_p50_p99_max_s"]],
            "new_connections": opened - tw_conns.count,
            "new_connections_per_scrape": round((opened - tw_conns.count) / max(1, rx_conn_scrapes), 3),
            "series_per_target": rx_series,
            "bytes_per_target": len(records["sample_body"].encode()),
        },
    }
    tw_r, rx_r = tools["tierwatch"], tools["redis_exporter"]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + shlex.join(["bench/redis_bench.py", *sys.argv[1:]]),
        "machine": machine(),
        "setup": {
            "targets": len(urls),
            "servers": servers_n,
            "cluster_size": args.cluster_size,
            "interval_s": interval,
            "warmup_s": args.warmup * interval,
            "window_s": rounds * interval,
            "loadavg_1m_window_start_end": [load0, load1],
            "redis_exporter_version": rx_version,
        },
        "results": tools,
        "ratios_tierwatch_over_redis_exporter": {
            "cpu_per_probe": round(tw_r["cpu_ms_per_probe"] / rx_r["cpu_ms_per_scrape"], 3),
            "peak_rss": round(tw_r["peak_rss_mib"] / rx_r["peak_rss_mib"], 2),
            "series_per_target": round(tw_series["mean"] / rx_series, 3) if rx_series else None,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """The results as a Markdown table on stdout."""
    tw, rx = result["results"]["tierwatch"], result["results"]["redis_exporter"]
    setup, ratio = result["setup"], result["ratios_tierwatch_over_redis_exporter"]
    print(
        f"{setup['targets']} targets on {setup['servers']} redis-server, every {setup['interval_s']:g}s, "
        f"window {setup['window_s']:g}s"
    )
    print("| | tierwatch | redis_exporter | ratio |\n|---|---:|---:|---:|")
    print(f"| probes / scrapes | {tw['probes']} | {rx['scrapes']} | |")
    cpu = f"{tw['cpu_ms_per_probe']} | {rx['cpu_ms_per_scrape']} | {ratio['cpu_per_probe']}"
    print(f"| CPU ms per target | {cpu} |")
    print(f"| cores | {tw['cores']} | {rx['cores']} | |")
    print(f"| peak RSS MiB | {tw['peak_rss_mib']} | {rx['peak_rss_mib']} | {ratio['peak_rss']} |")
    print(f"| new connections | {tw['new_connections']} | {rx['new_connections']} | |")
    series = tw["series_per_target"]
    theirs = rx["series_per_target"]
    print(f"| series per target | {series['mean']} | {theirs} | {ratio['series_per_target']} |")
    print(f"| failed | {tw['probes_failed']} | {rx['scrapes_failed']} | |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--servers", type=int, default=200, help="redis-server processes (default 200)")
    parser.add_argument("--cluster-size", type=int, default=5, help="targets per tierwatch cluster")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up, in intervals")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--driver", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        run_driver(args.driver)
        return
    result = bench(args)
    print_table(result)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
