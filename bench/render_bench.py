"""How long /metrics takes to produce for N targets: a full render, and the ready body.

A full render through prometheus_client (``TierwatchCollector``) is what a scrape after a state change
used to pay, on the event loop. The exporter now serves a ready body (``ReadyExposition``): each
target's lines are rendered when its probe finishes (measured here per target: the first time, and again
after a probe, from the label text cached the first time) and a scrape only joins them (measured here
per scrape). Run: ``python bench/render_bench.py [--targets 200] [--repeat 50]``.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import load_config
from tierwatch.events import EventLog
from tierwatch.metrics import ReadyExposition, TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.probes.base import Sample
from tierwatch.probes.http import HTTP_CONTENT_LENGTH, HTTP_STATUS


def synthetic_monitor(targets: int) -> Monitor:
    """A monitor over ``targets`` HTTP targets whose state looks like after many healthy probes."""
    config = {
        "clusters": [{"name": "web", "tier": "app", "targets": [
            {"name": f"t{i}", "region": "primary", "url": f"http://127.0.0.1:1/health?t={i}"}
            for i in range(targets)]}],
    }  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "c.yml"
    path.write_text(yaml.safe_dump(config))
    monitor = Monitor(load_config(path), EventLog(stream=io.StringIO()))
    now = time.time()
    for state in monitor.states:
        state.up, state.last_probe, state.last_duration = True, now, 0.002
        for _ in range(100):
            state.observe_duration(0.002)
        state.samples = [Sample(HTTP_STATUS, (), 200.0), Sample(HTTP_CONTENT_LENGTH, (), 12.0)]
    monitor.rounds = 100
    return monitor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    load = os.getloadavg()
    monitor = synthetic_monitor(args.targets)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    size = len(generate_latest(registry))
    times = []
    for _ in range(args.repeat):
        start = time.process_time()
        generate_latest(registry)
        times.append((time.process_time() - start) * 1000)
    median = statistics.median(times)
    print(
        f"{args.targets} targets: {size} bytes; full render {median:.2f} CPU-ms median "
        f"({median / args.targets * 1000:.1f} CPU-us per target), {args.repeat} renders"
    )
    start = time.process_time()
    exposition = ReadyExposition(monitor)  # renders every target's lines a first time
    per_target = (time.process_time() - start) / args.targets * 1e6
    rerenders = []
    for _ in range(5):  # a round of probes: each target's state changed, its lines rendered again
        for state in monitor.states:
            state.observe_duration(0.002)
            state.last_probe = (state.last_probe or 0.0) + 5.0
        start = time.process_time()
        for state in monitor.states:
            exposition.refresh(state)
        rerenders.append((time.process_time() - start) / args.targets * 1e6)
    joins = []
    for _ in range(args.repeat):
        monitor.version += 1
        start = time.process_time()
        exposition.body(generate_latest, "text/plain; version=0.0.4; charset=utf-8")
        joins.append((time.process_time() - start) * 1000)
    print(
        f"ready body: {per_target:.1f} CPU-us to render one target's lines the first time, "
        f"{statistics.median(rerenders):.1f} CPU-us median to render them again after a probe, "
        f"{statistics.median(joins):.2f} CPU-ms median to join them for a scrape"
    )
    # CPU time, not wall-clock, but a loaded machine still shares caches and frequency with it
    print(f"load average (1, 5, 15 min): {load} before, {os.getloadavg()} after; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
