"""The tail of back-to-back ``/metrics`` scrapes at 10,000 targets, and where the slow ones go.

The same stack as ``latency_bench.py`` (N fast HTTP targets on a few lab backends, one slow target,
5 s interval), the exporter run through ``exporter_trace.py`` (timing hooks, no change to its code).
After a warm-up of two intervals, ``--scrapes`` scrapes are fired back to back with curl (body
discarded; ``time_starttransfer`` and ``time_total``), which spreads them over several probe rounds.
Each scrape is matched, on CLOCK_MONOTONIC, against what the exporter did while it ran: cyclic-GC
collections (by generation), the render, the whole answer, probe-round ends and event-loop lag.

The result records the distribution (p50/p90/p99/max), the exporter's RSS, threads and CPU, the load
average at start and end (``machine.LoadAverage``), and for the scrapes over ``--slow-ms``, what
overlapped them.

Run: ``python bench/metrics_tail_bench.py --targets 10000 --scrapes 400 --output FILE``; with
``--label`` to name the tree (A/B runs put the tree under test first on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from latency_bench import cpu_seconds, exporter_config, percentile, vm_hwm_mib, vm_rss_mib
from machine import LoadAverage, machine

from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.ports import free_port
from tierwatch_lab.stack.process import wait_for

HERE = Path(__file__).resolve().parent
CURL_FORMAT = "%{time_starttransfer} %{time_total} %{size_download}"


def schedstat(pid: int) -> tuple[float, float]:
    """The main thread's time on a CPU and waiting for one while runnable, so far (ms)."""
    fields = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(fields[0]) / 1e6, int(fields[1]) / 1e6


def steal_ms() -> float:
    """Time the hypervisor ran something else on this machine's vCPUs, so far (ms, all vCPUs)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")


def curl_scrape(port: int, pid: int) -> dict[str, float]:
    """One GET /metrics by curl: its start and end on this process's monotonic clock, curl's own
    time to the first byte and in all, and the exporter's main thread's time on a CPU and waiting for
    one, and the vCPUs' steal, meanwhile (ms)."""
    run0, wait0 = schedstat(pid)
    steal0 = steal_ms()
    began = time.monotonic()
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", CURL_FORMAT, f"http://127.0.0.1:{port}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    ended = time.monotonic()
    run1, wait1 = schedstat(pid)
    first_byte, total, size = done.stdout.split()
    return {
        "t0": began,
        "t1": ended,
        "exporter_on_cpu_ms": run1 - run0,
        "exporter_runqueue_wait_ms": wait1 - wait0,
        "steal_ms": steal_ms() - steal0,
        "ttfb_ms": float(first_byte) * 1000,
        "total_ms": float(total) * 1000,
        "bytes": float(size),
    }


def distribution(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max (nearest rank) of ``values`` in ms, rounded."""
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": round(percentile(values, 0.5), 2),
        "p90": round(percentile(values, 0.9), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def overlap(events: list[dict[str, Any]], t0: float, t1: float) -> float:
    """Milliseconds of ``events`` (start ``t``, duration ``d``) inside [t0, t1]."""
    return sum(max(0.0, min(t1, e["t"] + e["d"]) - max(t0, e["t"])) for e in events) * 1000


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def attribute(scrapes: list[dict[str, float]], trace: list[dict[str, Any]], slow_ms: float) -> dict[str, Any]:
    """What overlapped each scrape: GC by generation, render, the whole answer, loop lag, round ends."""
    gc_by_gen = {g: [e for e in trace if e["k"] == "gc" and e["gen"] == g] for g in (0, 1, 2)}
    renders = [e for e in trace if e["k"] == "render"]
    requests = [e for e in trace if e["k"] == "request"]
    lags = [e for e in trace if e["k"] == "lag"]
    rounds = [e["t"] for e in trace if e["k"] == "round"]
    rows = []
    for s in scrapes:
        t0, t1 = s["t0"], s["t1"]
        rows.append(
            {
                "total_ms": round(s["total_ms"], 2),
                "ttfb_ms": round(s["ttfb_ms"], 2),
                "exporter_on_cpu_ms": round(s["exporter_on_cpu_ms"], 2),
                "exporter_runqueue_wait_ms": round(s["exporter_runqueue_wait_ms"], 2),
                "steal_ms": round(s["steal_ms"], 1),
                "gc2_ms": round(overlap(gc_by_gen[2], t0, t1), 2),
                "gc1_ms": round(overlap(gc_by_gen[1], t0, t1), 2),
                "gc0_ms": round(overlap(gc_by_gen[0], t0, t1), 2),
                "render_ms": round(overlap(renders, t0, t1), 2),
                "answer_ms": round(overlap(requests, t0, t1), 2),
                "lag_ms": round(overlap(lags, t0, t1), 2),
                "round_end_inside": any(t0 <= r <= t1 for r in rounds),
            }
        )
    slow = [r for r in rows if r["total_ms"] > slow_ms]
    fast = [r for r in rows if r["total_ms"] <= slow_ms]

    def share(group: list[dict[str, Any]], key: str) -> float | None:
        return round(sum(1 for r in group if r[key]) / len(group), 3) if group else None

    window = (scrapes[0]["t0"], scrapes[-1]["t1"]) if scrapes else (0.0, 0.0)
    in_window = {g: [e for e in gc_by_gen[g] if window[0] <= e["t"] <= window[1]] for g in (0, 1, 2)}
    return {
        "slow_ms": slow_ms,
        "slow_count": len(slow),
        "slow_with_gen2_share": share(slow, "gc2_ms"),
        "fast_with_gen2_share": share(fast, "gc2_ms"),
        "slow_with_round_end_share": share(slow, "round_end_inside"),
        "fast_with_round_end_share": share(fast, "round_end_inside"),
        # the scrapes' window only: start-up builds 10,000 targets and collects much more
        "collections_in_window": {str(g): len(events) for g, events in in_window.items()},
        "collection_ms_in_window": round(sum(e["d"] for g in in_window.values() for e in g) * 1000, 1),
        "longest_collection_ms_in_window": round(
            max((e["d"] for g in in_window.values() for e in g), default=0) * 1000, 1
        ),
        "gen2_ms": distribution([e["d"] * 1000 for e in gc_by_gen[2]]),
        "gen1_ms": distribution([e["d"] * 1000 for e in gc_by_gen[1]]),
        "gen0_ms": distribution([e["d"] * 1000 for e in gc_by_gen[0]]),
        "gen0_collections": len(gc_by_gen[0]),
        "gen1_collections": len(gc_by_gen[1]),
        "gen2_collections": len(gc_by_gen[2]),
        "render_ms": distribution([e["d"] * 1000 for e in renders]),
        "answer_ms": distribution([e["d"] * 1000 for e in requests]),
        "lag_events": len(lags),
        "lag_ms": distribution([e["d"] * 1000 for e in lags]),
        "slowest": sorted(rows, key=lambda r: -r["total_ms"])[:15],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    load = LoadAverage()
    with Stack() as stack:
        config = exporter_config(stack, args.backends, args.targets, args.interval)
        path = stack.root / "tierwatch.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        trace_path = stack.root / "trace.jsonl"
        port = free_port()
        argv = [sys.executable, str(HERE / "exporter_trace.py"), str(trace_path), "serve"]
        argv += ["--config", str(path), "--listen", f"127.0.0.1:{port}"]
        env = dict(
            os.environ, TW_TRACE_LAG="1" if args.lag else "0", TW_TRACE_GC="off" if args.gc_off else "on"
        )
        proc = stack.spawn("exporter", argv, env=env)
        assert proc.popen is not None
        pid = proc.popen.pid

        def ready() -> bool:
            proc.check_alive()
            return curl_ready(port)

        wait_for(ready, 60, "exporter ready")
        time.sleep(args.interval * 2)  # warm-up: every connection established
        load_window = LoadAverage()
        cpu_before, began = cpu_seconds(pid), time.monotonic()
        scrapes = [curl_scrape(port, pid) for _ in range(args.scrapes)]
        elapsed = time.monotonic() - began
        cpu = cpu_seconds(pid) - cpu_before
        figures = {
            "exporter_rss_mib": round(vm_rss_mib(pid), 1),
            "exporter_peak_rss_mib": round(vm_hwm_mib(pid), 1),
            "exporter_threads": threads(pid),
            "exporter_cores_during_scrapes": round(cpu / elapsed, 3),
            "window_s": round(elapsed, 1),
            "load": load_window.fields(),
        }
        proc.stop()  # SIGTERM: the trace's exit line is written
        trace = [json.loads(line) for line in trace_path.read_text().splitlines() if line.strip()]
        if args.keep_trace is not None:
            args.keep_trace.write_text(json.dumps({"scrapes": scrapes, "trace": trace}) + "\n")
    totals = [s["total_ms"] for s in scrapes]
    exit_line = next((e for e in trace if e["k"] == "exit"), {})
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "label": args.label,
        "gc_off": args.gc_off,
        "lag_traced": args.lag,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "machine": machine(),
        "load_whole_run": load.fields(),
        "targets": args.targets,
        "backends": args.backends,
        "interval_s": args.interval,
        "scrape_client": "curl",
        "back_to_back_total_ms": distribution(totals),
        "back_to_back_ttfb_ms": distribution([s["ttfb_ms"] for s in scrapes]),
        "runqueue_wait_ms_per_scrape": distribution([s["exporter_runqueue_wait_ms"] for s in scrapes]),
        "steal_ms_per_scrape": distribution([s["steal_ms"] for s in scrapes]),
        "over_100ms": sum(1 for t in totals if t > 100),
        "metrics_bytes": int(scrapes[-1]["bytes"]) if scrapes else 0,
        **figures,
        "gc_at_exit": {k: exit_line.get(k) for k in ("threshold", "tracked", "frozen", "stats")},
        "attribution": attribute(scrapes, trace, args.slow_ms),
    }


def curl_ready(port: int) -> bool:
    done = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/ready"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return done.stdout == "200"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--backends", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--scrapes", type=int, default=400, help="back-to-back scrapes")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="a scrape slower than this is slow")
    parser.add_argument("--lag", action="store_true", help="also trace event-loop lag (a 10 ms ticker)")
    parser.add_argument("--gc-off", action="store_true", help="the exporter without automatic collections")
    parser.add_argument("--keep-trace", type=Path, help="write every scrape and trace event here")
    parser.add_argument("--label", default="", help="names the tree under test")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("label", "back_to_back_total_ms", "over_100ms", "load")}
    summary["gen2"] = result["attribution"]["gen2_ms"]
    print(json.dumps(summary, indent=2))
    if math.isnan(result["exporter_rss_mib"]):
        raise SystemExit("exporter gone before the end")


if __name__ == "__main__":
    main()
