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

With ``--shards N`` the fast targets are split over 100 clusters and N exporters (``serve --shard
I/N``) run side by side on the same machine, each scraped once per interval; the figures are given
per exporter and summed. Every result records the load average at the window's start and end.

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
import subprocess
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


def scrape_seconds(port: int, client: str) -> float:
    """How long one GET /metrics takes with ``client``: ``python`` (http.client, reading and decoding
    the body in this process) or ``curl`` (a C client that discards the body, as a Go scraper costs
    little per byte): the first also counts the bench's own Python reading a 12.7 MB body."""
    if client == "python":
        return scrape(port)[1]
    done = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return float(done.stdout)


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
        cluster = "web" if labels["cluster"].startswith("web") else labels["cluster"]
        figures = out.setdefault(cluster, {})
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


def exporter_config(
    stack: Stack, backends: int, targets: int, interval: float, shards: int = 1
) -> dict[str, Any]:
    """The benched exporter's config: ``targets`` fast HTTP targets spread over ``backends`` backends
    (in 100 clusters when sharded: ``--shard`` splits clusters, not a cluster's targets) and one
    target that answers in 300 ms; the backends are started in ``stack``."""
    fast = [start_http_backend(stack, f"fast-{i}") for i in range(backends)]
    slow = start_http_backend(stack, "slow")
    slow.set_mode("slow", 0.3)
    fast_targets = [
        {"name": f"app-{i}", "region": "primary", "url": f"{fast[i % len(fast)].url}?t={i}"}
        for i in range(targets)
    ]
    groups = 100 if shards > 1 else 1
    web = [
        {"name": "web" if groups == 1 else f"web-{g}", "tier": "app", "targets": fast_targets[g::groups]}
        for g in range(groups)
    ]
    sluggish = {
        "name": "sluggish",
        "tier": "app",
        "targets": [{"name": "slow-1", "region": "primary", "url": slow.url}],
    }
    return {"monitor": {"interval": f"{interval}s", "timeout": "2s"}, "clusters": [*web, sluggish]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Stack() as stack:
        config = exporter_config(stack, args.backends, args.targets, args.interval, args.shards)
        path = stack.root / "tierwatch.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        if args.shards > 1:
            exporters = [
                start_exporter(
                    stack, path, name=f"exporter-{i}", extra_args=["--shard", f"{i}/{args.shards}"]
                )
                for i in range(args.shards)
            ]
        else:
            exporters = [start_exporter(stack, path)]
        pids = []
        for exporter in exporters:
            assert exporter.process.popen is not None
            pids.append(exporter.process.popen.pid)
        time.sleep(args.interval * 2)  # warm-up: every connection established
        load_before = os.getloadavg()
        befores = [scrape(e.port)[0] for e in exporters]
        cpu_before, began = [cpu_seconds(pid) for pid in pids], time.monotonic()
        scrapes: list[list[float]] = [[] for _ in exporters]
        for _ in range(args.rounds):
            time.sleep(args.interval)
            for i, exporter in enumerate(exporters):  # one after the other, as one Prometheus would
                scrapes[i].append(scrape_seconds(exporter.port, args.scrape_client))
        afters = [scrape(e.port)[0] for e in exporters]
        elapsed = time.monotonic() - began
        cpus = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
        load_after = os.getloadavg()
        # then back to back, as a second Prometheus or a curl would (not in the CPU figure)
        back_to_back = [
            sorted(scrape_seconds(e.port, args.scrape_client) for _ in range(args.scrapes)) for e in exporters
        ]
        per_exporter = []
        for i in range(len(exporters)):
            a, b = histograms(befores[i]), histograms(afters[i])
            probes = sum(b[c]["count"] - a[c]["count"] for c in ("web", "sluggish") if c in b)
            per_exporter.append(
                {
                    "shard": f"{i}/{args.shards}" if args.shards > 1 else None,
                    "fast": window(a["web"], b["web"]),
                    "slow_300ms": window(a["sluggish"], b["sluggish"]) if "sluggish" in b else None,
                    "failed_probes": int(b["_exporter"]["failures"] - a["_exporter"]["failures"]),
                    "overruns": int(b["_exporter"]["overruns"] - a["_exporter"]["overruns"]),
                    "probes": int(probes),
                    "cpu_ms_per_probe": round(cpus[i] / probes * 1000, 3) if probes else None,
                    "cores": round(cpus[i] / elapsed, 3),
                    "scrape_ms_median": round(statistics.median(scrapes[i]) * 1000, 2),
                    "scrape_ms_max": round(max(scrapes[i]) * 1000, 2),
                    # the first scrape of each interval: the state of a whole interval of probes changed
                    "scrape_ms_p99": round(percentile(scrapes[i], 0.99) * 1000, 2),
                    "back_to_back_scrape_ms_p50": round(statistics.median(back_to_back[i]) * 1000, 2),
                    "back_to_back_scrape_ms_p99": round(percentile(back_to_back[i], 0.99) * 1000, 2),
                    "metrics_bytes": len(afters[i].encode()),
                    "metrics_series": series(afters[i]),
                    "exporter_peak_rss_mib": round(vm_hwm_mib(pids[i]), 1),
                    "exporter_rss_mib": round(vm_rss_mib(pids[i]), 1),
                }
            )
        result: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "targets": args.targets,
            "scrape_client": args.scrape_client,
            "backends": args.backends,
            "shards": args.shards,
            "interval_s": args.interval,
            "window_s": args.interval * args.rounds,
            "probes_scheduled": (args.targets + 1) * args.rounds,
        }
        if len(per_exporter) == 1:
            result.update({k: v for k, v in per_exporter[0].items() if k != "shard"})
        else:
            result["exporters"] = per_exporter
            result["total"] = {
                "probes": sum(e["probes"] for e in per_exporter),
                "cores": round(sum(cpus) / elapsed, 3),
                "cpu_ms_per_probe": round(sum(cpus) / sum(e["probes"] for e in per_exporter) * 1000, 3),
                "exporter_peak_rss_mib": round(sum(e["exporter_peak_rss_mib"] for e in per_exporter), 1),
                "failed_probes": sum(e["failed_probes"] for e in per_exporter),
                "overruns": sum(e["overruns"] for e in per_exporter),
            }
        return result


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def vm_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=12, help="intervals in the measured window")
    parser.add_argument("--scrapes", type=int, default=100, help="back-to-back scrapes after the window")
    parser.add_argument(
        "--scrape-client",
        choices=("python", "curl"),
        default="python",
        help="what times the scrapes: http.client in this process, or curl (body discarded)",
    )
    parser.add_argument("--shards", type=int, default=1, help="exporters side by side, --shard I/N each")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
