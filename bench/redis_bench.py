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
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage
from side_by_side import (
    Http,
    NewConnections,
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
    start_http_service,
    tierwatch_config_head,
    tierwatch_fields,
    timed,
    version,
    vm_hwm_mib,
    write_results,
)
from side_by_side import print_table as print_side_by_side

from tierwatch_lab.stack import ManagedProcess, Stack
from tierwatch_lab.stack.redis import RedisServer, start_redis
from tierwatch_lab.stack.tierwatch import start_exporter

EXPORTER = "prometheus-redis-exporter"


# --------------------------------------------------------------------------- set-up


def target_urls(servers: list[RedisServer], targets: int) -> list[str]:
    """Target i: server i % len(servers), database i // len(servers)."""
    return [f"redis://127.0.0.1:{servers[i % len(servers)].port}/{i // len(servers)}" for i in range(targets)]


def tierwatch_config(urls: list[str], interval: float, cluster_size: int) -> str:
    """A tierwatch config with the targets in Redis clusters of ``cluster_size``."""
    lines = tierwatch_config_head(interval)
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
    return start_http_service(
        stack,
        EXPORTER,
        lambda port: [EXPORTER, "-redis.addr=", f"-web.listen-address=127.0.0.1:{port}"],
        "/",
        "redis_exporter",
    )


# --------------------------------------------------------------------------- the bench


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run both exporters side by side, measure over the window; return the results."""
    interval: float = args.interval
    servers_n = min(args.servers, args.targets)
    if args.targets > 16 * servers_n:
        raise SystemExit("at most 16 targets per server (Redis has 16 databases)")
    load = LoadAverage()
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

        window = Window.from_now(interval, args.duration, args.warmup)
        spec = window.driver_spec(
            stack.path("driver-records.json"),
            urls=[f"http://127.0.0.1:{rx_port}/scrape?target={quote(u, safe='')}" for u in urls],
            ok="\nredis_up 1",
            tierwatch_metrics=f"http://127.0.0.1:{tw_port}/metrics",
        )
        driver = start_driver(stack, spec, processes=args.drivers, max_lag=args.max_lag)
        window.announce(f"{len(urls)} targets on {servers_n} servers, {args.drivers} drivers")
        window.sleep_until_first()
        t_cpu0 = time.time()
        tw_cpu0, rx_cpu0 = cpu_seconds(tw.pid), cpu_seconds(rx.pid)
        t_conn0, conns0 = timed(lambda: connections(servers))
        tw_conns = NewConnections(tw.pid, {s.port for s in servers})
        body0 = tw_http.get("/metrics")[1]
        tw_conns.poll_until(window.end + 0.25, 0.2)
        tw_cpu1, rx_cpu1 = cpu_seconds(tw.pid), cpu_seconds(rx.pid)
        t_conn1 = time.time()
        conns1 = connections(servers)
        body1 = tw_http.get("/metrics")[1]
        records = driver_records(driver, spec)
        tw_rss, rx_rss = vm_hwm_mib(tw.pid), vm_hwm_mib(rx.pid)
        rx_version = version([EXPORTER, "--version"])

    scrapes = [s for s in records["scrapes"] if window.holds(s[0])]
    # redis_exporter scrapes synchronously: a scrape answered with redis_up 1 is one it did.
    rx_cpu_scrapes = sum(1 for s in scrapes if s[0] >= t_cpu0 and s[2])
    rx_conn_scrapes = sum(1 for s in scrapes if t_conn0 <= s[0] < t_conn1)
    opened = conns1 - conns0 - len(servers)  # the second connections() call's own
    rx_new = opened - tw_conns.count
    tw_r = tierwatch_fields(
        (body0, body1), tw_cpu1 - tw_cpu0, window.seconds, tw_rss, tw_conns.count, names, records
    )
    rx_r = {
        "scrapes": len(scrapes),
        "scrapes_served_in_cpu_window": rx_cpu_scrapes,
        **cpu_fields(rx_cpu1 - rx_cpu0, max(1, rx_cpu_scrapes), "scrape", window.seconds),
        "peak_rss_mib": round(rx_rss, 1),
        **scrape_fields(scrapes, records),
        "new_connections": rx_new,
        "new_connections_per_scrape": round(rx_new / max(1, rx_conn_scrapes), 3),
        **sample_fields(records),
    }
    tw_series, rx_series = tw_r["series_per_target"], rx_r["series_per_target"]
    valid = records["valid"]
    return {
        **run_fields("bench/redis_bench.py", load),
        "valid": valid,
        "invalid_reasons": records["invalid_reasons"],
        "driver": driver_fields(records),
        "setup": {
            "targets": len(urls),
            "servers": servers_n,
            "cluster_size": args.cluster_size,
            **window.setup(),
            "drivers": args.drivers,
            "redis_exporter_version": rx_version,
        },
        "results": {"tierwatch": tw_r, "redis_exporter": rx_r},
        "ratios_tierwatch_over_redis_exporter": {
            "cpu_per_probe": round(tw_r["cpu_ms_per_probe"] / rx_r["cpu_ms_per_scrape"], 3)
            if valid
            else None,
            "peak_rss": round(tw_r["peak_rss_mib"] / rx_r["peak_rss_mib"], 2),
            "series_per_target": round(tw_series["mean"] / rx_series, 3) if rx_series else None,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """The results as a Markdown table on stdout."""
    rss = result["results"]["redis_exporter"]["peak_rss_mib"]
    print_side_by_side(result, "redis_exporter", "redis-server", f"{rss}", "peak_rss")


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--servers", type=int, default=200, help="redis-server processes (default 200)")
    parser.add_argument("--cluster-size", type=int, default=5, help="targets per tierwatch cluster")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up, in intervals")
    add_driver_arguments(parser)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    result = bench(args)
    print_table(result)
    write_results(result, args.output)


if __name__ == "__main__":
    main()
