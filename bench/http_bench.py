"""Benchmark tierwatch against Debian's blackbox_exporter on the same HTTP targets, side by side.

Both exporters run at once against the same targets (URLs on a few ``tierwatch_lab.stack.http_backend``
processes) at the same interval. tierwatch probes in the background; a driver process plays
Prometheus: it scrapes tierwatch's /metrics once per interval and sends blackbox one
``/probe?module=http_2xx&target=...`` per target per interval. After a warm-up, over a window of whole
intervals, the bench measures for each exporter: CPU per probe (utime+stime from /proc/<pid>/stat over
probes performed), scrape latency, peak RSS (VmHWM) and new TCP connections opened to the targets.

Run: ``python bench/http_bench.py`` (about 100 s) or ``--quick``; results go to bench/results/http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import LoadAverage
from side_by_side import (
    Http,
    NewConnections,
    Window,
    argument_parser,
    cpu_fields,
    cpu_seconds,
    driver_records,
    metric_sum,
    percentile,
    run_fields,
    start_driver,
    start_http_service,
    tierwatch_config_head,
    tierwatch_counters,
    timed,
    version,
    vm_hwm_mib,
    write_results,
)

from tierwatch_lab.stack import ManagedProcess, Stack
from tierwatch_lab.stack.http import HttpBackend, start_http_backend
from tierwatch_lab.stack.tierwatch import start_exporter

BLACKBOX = "prometheus-blackbox-exporter"
CLAIMED_BLACKBOX_CPU_MS = 2.9  # the figure quoted for blackbox_exporter per HTTP probe
GOAL_FACTOR = 0.5  # tierwatch aims at half of it, with zero new connections in steady state
RESULTS = Path(__file__).resolve().parent / "results" / "http.json"
MIN_SERVED = 0.98  # blackbox must have probed this share of the /probe requests scheduled, or the run is void


# --------------------------------------------------------------------------- measurements


def backend_stats(conns: list[Http]) -> Counter[str]:
    """The backends' own counters so far, summed: ``requests``, ``connections`` and per client
    (``requests.Blackbox``, ``connections.tierwatch``, ...)."""
    total: Counter[str] = Counter()
    for conn in conns:
        total.update({k: int(v) for k, v in (item.split("=") for item in conn.get("/_stats")[1].split())})
    return total


# --------------------------------------------------------------------------- setup


def tierwatch_config(targets: list[str], interval: float) -> str:
    """A tierwatch config with one app cluster holding every target."""
    lines = [
        *tierwatch_config_head(interval),
        "  - name: bench",
        "    tier: app",
        "    targets:",
    ]
    lines += [f'      - {{name: t{i:04d}, region: primary, url: "{url}"}}' for i, url in enumerate(targets)]
    return "\n".join(lines) + "\n"


BLACKBOX_CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: 2s
    http: {}
"""


def start_tierwatch(stack: Stack, targets: list[str], interval: float) -> tuple[ManagedProcess, int]:
    """Start ``tierwatch serve`` and wait until its first round is done."""
    config = stack.path("tierwatch.yml")
    config.write_text(tierwatch_config(targets, interval))
    exporter = start_exporter(stack, config, name="tierwatch")
    return exporter.process, exporter.port


def start_blackbox(stack: Stack) -> tuple[ManagedProcess, int]:
    """Start blackbox_exporter with an http_2xx module (2 s timeout) written to the stack's directory."""
    config = stack.path("blackbox.yml")
    config.write_text(BLACKBOX_CONFIG)
    return start_http_service(
        stack,
        "blackbox",
        lambda port: [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        "/-/healthy",
        "blackbox_exporter /-/healthy",
    )


# --------------------------------------------------------------------------- the bench


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run both exporters, measure over the window, stop everything; return the results."""
    interval: float = args.interval
    load = LoadAverage()
    with Stack(keep=args.keep) as stack:
        backends: list[HttpBackend] = [
            start_http_backend(stack, f"backend-{i}") for i in range(args.backends)
        ]
        targets = [
            f"http://127.0.0.1:{backends[i % len(backends)].port}/health?t={i}" for i in range(args.targets)
        ]
        backend_ports = {b.port for b in backends}
        tw, tw_port = start_tierwatch(stack, targets, interval)
        bb, bb_port = start_blackbox(stack)
        tw_http = Http(tw_port)
        stats_conns = [Http(b.port) for b in backends]

        window = Window.from_now(interval, args.duration, args.warmup)
        blackbox = f"http://127.0.0.1:{bb_port}"
        spec = window.driver_spec(
            stack.path("driver-records.json"),
            urls=[f"{blackbox}/probe?module=http_2xx&target={quote(t, safe='')}" for t in targets],
            ok="\nprobe_success 1",
            headers={"X-Prometheus-Scrape-Timeout-Seconds": f"{min(10.0, interval):g}"},
            burst=args.burst,
            tierwatch_metrics=f"http://127.0.0.1:{tw_port}/metrics",
        )
        drivers = start_driver(stack, spec, processes=args.drivers, max_lag=args.max_lag)
        window.announce(f"{len(targets)} targets on {len(backends)} backends, {args.drivers} drivers")

        window.sleep_until_first()
        # Each tool's CPU over [t0, t1] is divided by the probes the backends saw from it over the
        # same span (their own per-client counters), not by the requests the driver scheduled.
        t_cpu0 = time.time()
        tw_cpu0, bb_cpu0 = cpu_seconds(tw.pid), cpu_seconds(bb.pid)
        t_stats0, stats0 = timed(lambda: backend_stats(stats_conns))
        tw_conns = NewConnections(tw.pid, backend_ports)
        tw_count0, tw_fail0, tw_late0 = tierwatch_counters(tw_http.get("/metrics")[1])
        tw_conns.poll_until(window.end + 0.25, 0.1)  # tierwatch's own sockets, a cross-check
        tw_cpu1, bb_cpu1 = cpu_seconds(tw.pid), cpu_seconds(bb.pid)
        t_stats1, stats1 = timed(lambda: backend_stats(stats_conns))
        t_cpu1 = time.time()
        tw_count1, tw_fail1, tw_late1 = tierwatch_counters(tw_http.get("/metrics")[1])
        records = driver_records(drivers, spec, args.driver_timeout)

        # tierwatch /metrics latency, after the window (not counted in CPU), while it keeps probing.
        latencies = []
        for _ in range(args.scrapes):
            began = time.perf_counter()
            status, body = tw_http.get("/metrics")
            latencies.append(time.perf_counter() - began)
            if status != 200:
                raise RuntimeError(f"tierwatch /metrics answered {status}")
            time.sleep(args.scrape_gap)
        tw_up = metric_sum(body, "tierwatch_up")
        metrics_bytes = len(body.encode())
        tw_rss, bb_rss = vm_hwm_mib(tw.pid), vm_hwm_mib(bb.pid)

    served = stats1 - stats0
    bb_served, tw_served = served["requests.Blackbox"], served["requests.tierwatch"]
    bb_requests = [p for p in records["scrapes"] if window.holds(p[0])]
    bb_latency = [p[1] for p in bb_requests] or [0.0]
    bb_scheduled = sum(1 for p in records["scrapes"] if t_stats0 <= p[0] < t_stats1)
    tw_probes = tw_count1 - tw_count0
    valid, reasons = records["valid"], list(records["invalid_reasons"])
    if bb_served < MIN_SERVED * bb_scheduled:
        valid = False
        reasons.append(
            f"blackbox probed {bb_served} times for {bb_scheduled} /probe requests scheduled "
            f"(under {MIN_SERVED:.0%}): it or the driver fell behind"
        )
    tools = {
        "tierwatch": {
            "probes_served": tw_served,
            "probes_own_counter": int(tw_probes),
            **cpu_fields(tw_cpu1 - tw_cpu0, tw_served or 1, "probe", t_cpu1 - t_cpu0),
            "latency_what": f"GET /metrics with {len(targets)} targets ({metrics_bytes} bytes), "
            f"{len(latencies)} sequential scrapes",
            "latency_median_ms": round(1000 * statistics.median(latencies), 2),
            "latency_p99_ms": round(1000 * percentile(latencies, 99), 2),
            "driver_scrape_median_ms": round(
                1000 * statistics.median([s[1] for s in records["tierwatch_scrapes"]] or [0.0]), 2
            ),
            "peak_rss_mib": round(tw_rss, 1),
            "probes_failed": int(tw_fail1 - tw_fail0),
            "round_overruns": int(tw_late1 - tw_late0),
            "new_connections": served["connections.tierwatch"],
            "new_connections_own_sockets": tw_conns.count,
            "targets_up_at_end": int(tw_up),
        },
        "blackbox": {
            "probes_served": bb_served,
            "probe_requests_scheduled": bb_scheduled,
            "probe_requests_in_window": len(bb_requests),
            "probe_requests_failed": sum(1 for p in bb_requests if not p[2]),
            **cpu_fields(bb_cpu1 - bb_cpu0, bb_served or 1, "probe", t_cpu1 - t_cpu0),
            "latency_what": f"GET /probe (synchronous probe), {len(bb_requests)} requests from the driver",
            "latency_median_ms": round(1000 * statistics.median(bb_latency), 2),
            "latency_p99_ms": round(1000 * percentile(bb_latency, 99), 2),
            "peak_rss_mib": round(bb_rss, 1),
            "new_connections": served["connections.Blackbox"],
        },
    }
    for tool in tools.values():
        tool["new_connections_per_probe"] = round(tool["new_connections"] / (tool["probes_served"] or 1), 3)
    tw_r, bb_r = tools["tierwatch"], tools["blackbox"]
    keys = ("cpu_ms_per_probe", "latency_median_ms", "latency_p99_ms", "peak_rss_mib", "new_connections")
    ratios = {key: round(tw_r[key] / bb_r[key], 3) if valid and bb_r[key] else None for key in keys}
    goal_cpu = CLAIMED_BLACKBOX_CPU_MS * GOAL_FACTOR
    return {
        **run_fields("bench/http_bench.py", load),
        "valid": valid,
        "invalid_reasons": reasons,
        "setup": {
            "targets": len(targets),
            "backends": len(backends),
            **window.setup(),
            "burst": args.burst,
            "drivers": args.drivers,
            "blackbox_version": version([BLACKBOX, "--version"]),
        },
        "driver": {
            "late_p50_p99_max_s": records["driver_late_p50_p99_max_s"],
            "max_lag_bound_s": records["driver_max_lag_bound_s"],
            "per_process": records["drivers"],
        },
        "backends_during_cpu_window": dict(sorted(served.items())),
        "results": tools,
        "ratios_tierwatch_over_blackbox": ratios,
        "goal": {
            "claimed_blackbox_cpu_ms_per_probe": CLAIMED_BLACKBOX_CPU_MS,
            "tierwatch_target_cpu_ms_per_probe": goal_cpu,
            "cpu_met": tw_r["cpu_ms_per_probe"] <= goal_cpu,
            "cpu_quarter_of_measured_blackbox": None
            if ratios["cpu_ms_per_probe"] is None
            else ratios["cpu_ms_per_probe"] <= 0.25,
            "zero_new_connections_met": tw_r["new_connections"] == 0,
        },
    }


async def _client_cpu_per_get(kind: str, urls: list[str], rounds: int) -> float:
    """CPU seconds of this process per GET: one kept-alive client per URL (as the probes hold them),
    ``rounds`` rounds of one concurrent GET per URL, after a round that opens the connections."""
    from tierwatch.clients.http import HttpClient, HttpRules, ssl_context

    tls, rules = ssl_context(None, True), HttpRules()
    if kind == "tierwatch":
        ours = [HttpClient(10.0, tls) for _ in urls]

        async def get(i: int) -> None:
            await ours[i].check(urls[i], rules)

        async def close() -> None:
            await asyncio.gather(*(c.close() for c in ours))
    else:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        headers = {"User-Agent": "tierwatch", "Accept-Encoding": "identity"}
        theirs = [
            httpx.AsyncClient(timeout=10.0, limits=limits, verify=tls, trust_env=False, headers=headers)
            for _ in urls
        ]

        async def get(i: int) -> None:
            async with theirs[i].stream("GET", urls[i]) as response:
                await response.aread()
                assert response.status_code == 200

        async def close() -> None:
            await asyncio.gather(*(c.aclose() for c in theirs))

    await asyncio.gather(*(get(i) for i in range(len(urls))))
    began = time.process_time()
    for _ in range(rounds):
        await asyncio.gather(*(get(i) for i in range(len(urls))))
    spent = time.process_time() - began
    await close()
    return spent / (rounds * len(urls))


def client_cpu(args: argparse.Namespace) -> None:
    """``--client-cpu``: CPU per GET of the probes' HTTP client and of httpx, alone in this process."""
    with Stack(keep=args.keep) as stack:
        backends = [start_http_backend(stack, f"backend-{i}") for i in range(args.backends)]
        urls = [
            f"http://127.0.0.1:{backends[i % len(backends)].port}/health?t={i}" for i in range(args.targets)
        ]
        for kind in ("httpx", "tierwatch", "httpx", "tierwatch"):
            per_get = asyncio.run(_client_cpu_per_get(kind, urls, args.client_rounds))
            print(f"{kind:>10}: {1e6 * per_get:6.0f} µs CPU per GET, {len(urls)} concurrent kept-alive GETs")


def print_table(result: dict[str, Any]) -> None:
    """The results as a plain-text table on stdout."""
    tw, bb = result["results"]["tierwatch"], result["results"]["blackbox"]
    ratio = result["ratios_tierwatch_over_blackbox"]
    rows = [
        ("probes served", "probes_served", None),
        ("CPU ms / probe", "cpu_ms_per_probe", "cpu_ms_per_probe"),
        ("latency median ms", "latency_median_ms", "latency_median_ms"),
        ("latency p99 ms", "latency_p99_ms", "latency_p99_ms"),
        ("peak RSS MiB", "peak_rss_mib", "peak_rss_mib"),
        ("new TCP connections", "new_connections", "new_connections"),
    ]
    print(f"{'':22}{'tierwatch':>12}{'blackbox':>12}{'tw/bb':>9}")
    for label, key, ratio_key in rows:
        value = ratio.get(ratio_key) if ratio_key else None
        shown = "-" if value is None else f"{value:g}"
        print(f"{label:22}{tw[key]:>12g}{bb[key]:>12g}{shown:>9}")
    print(f"tierwatch latency: {tw['latency_what']}; blackbox latency: {bb['latency_what']}")
    print(
        f"blackbox: {bb['probes_served']} probes served for {bb['probe_requests_scheduled']} /probe "
        f"requests scheduled; driver late p50/p99/max {result['driver']['late_p50_p99_max_s']} s; "
        f"load average {result['load']['loadavg_start']} -> {result['load']['loadavg_end']}"
    )
    if not result["valid"]:
        print("INVALID run, no ratio computed: " + "; ".join(result["invalid_reasons"]))
    goal = result["goal"]
    print(
        f"goal: tierwatch <= {goal['tierwatch_target_cpu_ms_per_probe']} CPU-ms/probe: "
        f"{'met' if goal['cpu_met'] else 'MISSED'}; zero new connections: "
        f"{'met' if goal['zero_new_connections_met'] else 'MISSED'}"
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--targets", type=int, default=200, help="number of HTTP targets (default 200)")
    parser.add_argument(
        "--backends", type=int, default=10, help="backend processes serving them (default 10)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="probe interval, seconds (default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, seconds (default 60)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up, in intervals (default 2)")
    parser.add_argument("--scrapes", type=int, default=300, help="tierwatch /metrics latency samples")
    parser.add_argument("--scrape-gap", type=float, default=0.02, help="pause between those samples, s")
    parser.add_argument(
        "--burst",
        action="store_true",
        help="send all /probe requests of a round at once (default: spread like Prometheus)",
    )
    parser.add_argument("--quick", action="store_true", help="short run: 2 s interval, 10 s window")
    parser.add_argument("--output", type=Path, help=f"JSON results (default {RESULTS}; none with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (configs, logs)")
    parser.add_argument(
        "--client-cpu",
        action="store_true",
        help="only measure CPU per GET of tierwatch's HTTP client and of httpx, in this process",
    )
    parser.add_argument("--client-rounds", type=int, default=20, help="rounds of GETs for --client-cpu")
    parser.add_argument(
        "--drivers", type=int, default=2, help="driver processes sharing the /probe requests (default 2)"
    )
    parser.add_argument(
        "--max-lag",
        type=float,
        default=1.0,
        help="a run is invalid if a driver sends a request of the window later than this, s (default 1)",
    )
    parser.add_argument(
        "--driver-timeout", type=float, default=60.0, help="wait for the drivers after the window, s"
    )
    args = parser.parse_args()
    if args.client_cpu:
        client_cpu(args)
        return
    if args.quick:
        args.interval, args.duration, args.warmup, args.scrapes = 2.0, 10.0, 1, 50
    result = bench(args)
    print_table(result)
    write_results(result, args.output or (None if args.quick else RESULTS))


if __name__ == "__main__":
    main()
