"""Are recorded probe latencies the targets' own, at scale? (issue 17)

Starts the real ``tierwatch serve`` watching N fast HTTP targets (``/health`` on a few
``tierwatch_lab.stack.http_backend`` processes, answering in well under a millisecond) plus one target
that answers in 300 ms, scrapes ``/metrics`` once per interval like Prometheus, and after a warm-up reads
the exporter's own ``tierwatch_cluster_probe_duration_seconds`` histograms (one per cluster and region;
the fast targets and the slow one are separate clusters) over a window of whole intervals:

- the share of the fast targets' probes recorded at or under 10 ms (the goal: p99 under 10 ms, i.e. a
  share of at least 0.99), and the p50/p99 interpolated from the buckets;
- the slow target's mean recorded duration (the goal: 300 ms, not more);
- failed probes, skipped probe slots (overruns), scrape latency (once per interval, and back to back
  after the window), the exposition's bytes and series, the exporter's CPU per probe and cores over the
  window (one scrape per interval included) and its peak RSS.

Run: ``python bench/latency_bench.py`` (2000 targets, 5 s interval, 60 s window; about 100 s);
results go to bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from tierwatch.metric_catalog import PROBE_BUCKETS
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tierwatch import start_exporter

RESULTS = Path(__file__).resolve().parent / "results" / "latency.json"
SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(port: int) -> tuple[str, float]:
    """One GET /metrics: (text, seconds)."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    return body, time.perf_counter() - began


def histograms(text: str) -> dict[str, dict[str, float]]:
    """cluster -> {le: cumulative count summed over its regions, "sum": ..., "count": ...}, plus
    "_exporter" -> failures and overruns."""
    out: dict[str, dict[str, float]] = {"_exporter": {"failures": 0.0, "overruns": 0.0}}
    for line in text.splitlines():
        if line.startswith("tierwatch_probe_round_overruns_total "):
            out["_exporter"]["overruns"] = float(line.split()[1])
            continue
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels_text, value = match.groups()
        labels = dict(LABEL.findall(labels_text))
        if name == "tierwatch_probe_failures_total":
            out["_exporter"]["failures"] += float(value)
            continue
        if not name.startswith("tierwatch_cluster_probe_duration_seconds"):
            continue
        figures = out.setdefault(labels["cluster"], {})
        key = labels["le"] if name.endswith("_bucket") else name.rsplit("_", 1)[1]
        figures[key] = figures.get(key, 0.0) + float(value)
    return out


def quantile(buckets: list[tuple[float, float]], total: float, q: float) -> float:
    """Quantile ``q`` interpolated in cumulative ``buckets`` (upper bound, count), like PromQL's
    histogram_quantile."""
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = upper, count
    return math.inf


def window(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    total = after["count"] - before["count"]
    buckets = [(b, after[f"{b:g}"] - before[f"{b:g}"]) for b in PROBE_BUCKETS]
    under_10ms = after["0.01"] - before["0.01"]
    return {
        "probes": int(total),
        "share_at_or_under_10ms": round(under_10ms / total, 5) if total else None,
        "p50_ms": round(quantile(buckets, total, 0.5) * 1000, 3),
        "p99_ms": round(quantile(buckets, total, 0.99) * 1000, 3),
        "mean_ms": round((after["sum"] - before["sum"]) / total * 1000, 3) if total else None,
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def series(text: str) -> int:
    """Samples in an exposition (its lines but comments)."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Stack() as stack:
        backends = [start_http_backend(stack, f"fast-{i}") for i in range(args.backends)]
        slow = start_http_backend(stack, "slow")
        slow.set_mode("slow", 0.3)
        fast_targets = [
            {"name": f"app-{i}", "region": "primary", "url": f"{backends[i % len(backends)].url}?t={i}"}
            for i in range(args.targets)
        ]
        config = {
            "monitor": {"interval": f"{args.interval}s", "timeout": "2s"},
            "clusters": [
                {"name": "web", "tier": "app", "targets": fast_targets},
                {
                    "name": "sluggish",
                    "tier": "app",
                    "targets": [{"name": "slow-1", "region": "primary", "url": slow.url}],
                },
            ],
        }
        path = stack.root / "tierwatch.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        exporter = start_exporter(stack, path)
        assert exporter.process.popen is not None
        pid = exporter.process.popen.pid
        time.sleep(args.interval * 2)  # warm-up: every connection established
        before, _ = scrape(exporter.port)
        cpu_before, began = cpu_seconds(pid), time.monotonic()
        scrapes = []
        for _ in range(args.rounds):
            time.sleep(args.interval)
            _, took = scrape(exporter.port)
            scrapes.append(took)
        after, _ = scrape(exporter.port)
        cpu, elapsed = cpu_seconds(pid) - cpu_before, time.monotonic() - began
        # then back to back, as a second Prometheus or a curl would (not in the CPU figure)
        back_to_back = sorted(scrape(exporter.port)[1] for _ in range(args.scrapes))
        a, b = histograms(before), histograms(after)
        probes = sum(b[c]["count"] - a[c]["count"] for c in ("web", "sluggish"))
        return {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "targets": args.targets,
            "backends": args.backends,
            "interval_s": args.interval,
            "window_s": args.interval * args.rounds,
            "fast": window(a["web"], b["web"]),
            "slow_300ms": window(a["sluggish"], b["sluggish"]),
            "failed_probes": int(b["_exporter"]["failures"] - a["_exporter"]["failures"]),
            "overruns": int(b["_exporter"]["overruns"] - a["_exporter"]["overruns"]),
            "probes": int(probes),
            "probes_scheduled": (args.targets + 1) * args.rounds,
            "cpu_ms_per_probe": round(cpu / probes * 1000, 3) if probes else None,
            "cores": round(cpu / elapsed, 3),
            "scrape_ms_median": round(statistics.median(scrapes) * 1000, 2),
            "scrape_ms_max": round(max(scrapes) * 1000, 2),
            "back_to_back_scrape_ms_p50": round(statistics.median(back_to_back) * 1000, 2),
            "back_to_back_scrape_ms_p99": round(back_to_back[int(len(back_to_back) * 0.99) - 1] * 1000, 2),
            "metrics_bytes": len(after.encode()),
            "metrics_series": series(after),
            "exporter_peak_rss_mib": round(vm_hwm_mib(pid), 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=12, help="intervals in the measured window")
    parser.add_argument("--scrapes", type=int, default=100, help="back-to-back scrapes after the window")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
