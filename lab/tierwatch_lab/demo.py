"""``tierwatch demo``: the architecture on one machine, watched and repaired by the whole kit.

Starts, on 127.0.0.1 with the machine's own binaries: an HAProxy pair behind a VIP (a forwarder that
plays VRRP: see stack/tcp_forwarder.py), four app servers in two regions, Redis master + 2 replicas +
a backup master and replica in the failover region (+ 3 Sentinels with ``--sentinel``), PostgreSQL
primary + 2 replicas + a DR replica, write addresses (HAProxy tcp backends) for Redis and PostgreSQL,
and the chain: the exporter, Prometheus with the kit's rules, Alertmanager with the kit's routes and
the recovery service. Ctrl-C stops everything and removes its data.

The demo runs the chain with the fast-failover settings of docs/failover.md (1 s probe, scrape and
evaluation; 5 s ``for`` on the alerts that trigger an action) so the drills finish in seconds.

This module is the command; the demo is started by demo_build.py (``build``, re-exported here with
``DemoOptions`` and ``DemoStack``), the scale profile by demo_scale.py.
"""

from __future__ import annotations

import shutil
import sys
import time

from .demo_build import DemoOptions, build
from .demo_scale import build_scale, missing_scale_packages
from .demo_stack import DemoStack
from .stack import Stack, StackError
from .stack.postgres import pg_bin_dir
from .traffic import TrafficGenerator, demo_traffic

__all__ = ["REQUIRED", "TRAFFIC_RATE", "DemoOptions", "DemoStack", "build", "missing_packages", "run"]

REQUIRED = {
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-sentinel": "redis-sentinel",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "prometheus-node-exporter": "prometheus-node-exporter",
    "pgbackrest": "pgbackrest",
    "rsyslogd": "rsyslog",  # the central log collector (DemoOptions.logs)
    "mtail": "mtail",  # its lines into counters, job logs
}
TRAFFIC_RATE = 10.0  # requests/s the demo sends through the VIP (traffic.py)


def missing_packages() -> list[str]:
    """Debian packages the demo needs that are not installed."""
    missing = [package for binary, package in REQUIRED.items() if shutil.which(binary) is None]
    try:
        pg_bin_dir()
    except (FileNotFoundError, StackError):
        missing.append("postgresql")
    return missing


def run(sentinel: bool = False, profile: str = "default") -> int:
    """Start the demo (``profile`` ``scale``: demo_scale.py); block until Ctrl-C; stop everything."""
    missing = missing_packages() + (missing_scale_packages() if profile == "scale" else [])
    if missing:
        print(
            f"tierwatch demo: missing Debian packages: {' '.join(missing)}\n"
            f"install them with: apt-get install {' '.join(missing)}  (or run ./scripts/setup)",
            file=sys.stderr,
        )
        return 1
    stack = Stack()
    traffic: TrafficGenerator | None = None
    try:
        print("tierwatch demo: starting the stack and the chain (takes ~20 s)...", flush=True)
        scale = build_scale(stack, sentinel=sentinel) if profile == "scale" else None
        demo = scale.demo if scale else build(stack, DemoOptions(sentinel=sentinel))
        traffic = demo_traffic(demo, TRAFFIC_RATE).start()
        stack.on_close(traffic.stop)  # also stopped first in `finally`, before the servers
        demo.summary.append(
            f"Traffic        {TRAFFIC_RATE:g} requests/s through the VIP to /work (lab/traffic.py)"
        )
        print(
            "\n".join(
                [
                    "",
                    *demo.summary,
                    "Drills         tierwatch demo drill --help  (each starts a stack of its own)",
                    "Stop           Ctrl-C (stops every process and removes the data)",
                    "",
                ]
            ),
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        print(f"tierwatch demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if traffic is not None:
            traffic.stop()
        stack.close()
        print("tierwatch demo: stopped; every process and data directory removed.", flush=True)
    return 0
