"""``tierwatch demo`` and ``tierwatch demo drill``: the lab's subcommand of the product's CLI.

Registered as the entry point ``tierwatch.commands``/``demo`` (lab/pyproject.toml); the product's CLI
loads it only when its first argument is ``demo``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any


def _kit_problem(command: str) -> bool:
    """Print why the demo cannot run from here (not a clone of the repository); True if it cannot."""
    from .kit import kit_problem

    problem = kit_problem()
    if problem:
        print(f"tierwatch {command}: {problem}", file=sys.stderr)
    return problem is not None


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, whatever this process inherited: a background job of
    a non-interactive shell starts with SIGINT ignored, and Python keeps an inherited SIG_IGN."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _demo(args: argparse.Namespace) -> int:
    if _kit_problem("demo"):
        return 1
    from .demo import run

    stop_on_signals()
    return run(sentinel=args.sentinel, profile=args.profile)


def _drill(args: argparse.Namespace) -> int:
    if _kit_problem("demo drill"):
        return 1
    from .demo import missing_packages
    from .drills import SCENARIOS, run_drill

    missing = missing_packages()
    if missing:
        print(f"tierwatch demo drill: missing Debian packages: {' '.join(missing)}", file=sys.stderr)
        return 1
    stop_on_signals()
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    for scenario in scenarios:
        print(f"tierwatch demo drill {scenario}: starting a demo stack...", flush=True)
        result = run_drill(scenario, timeout=args.timeout)
        print(result.render(), flush=True)
        results.append(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump([r.as_dict() for r in results], out, indent=2)
    if args.report:
        from .drill_report import report_page

        with open(args.report, "w", encoding="utf-8") as out:
            out.write(report_page(results))
    bad = [r for r in results if not r.recovered or r.lost or any(v != 1 for v in r.primaries.values())]
    return 1 if bad else 0


def _add_drill_parser(demo: argparse.ArgumentParser) -> None:
    from .drills import SCENARIOS

    demo_sub = demo.add_subparsers(dest="demo_command", metavar="drill")
    drill = demo_sub.add_parser(
        "drill",
        help="break a demo stack on purpose and time its recovery",
        description="Start a demo stack, cause a failure, wait for the kit to repair it, and print the "
        "timeline (failure, detection, alert, action, recovered) and the acknowledged writes lost. "
        "Scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()) + ".",
    )
    drill.add_argument("scenario", choices=[*SCENARIOS, "all"])
    drill.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for recovery (default 90)"
    )
    drill.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    drill.add_argument(
        "--report",
        metavar="FILE",
        help="also write a self-contained HTML report: a timeline chart (acknowledged writes per 100 ms "
        "per engine, markers for failure, detection, alert, action, writes back, rejoin; the primaries "
        "per engine over time) and the figures; with 'all', one page with a section per drill",
    )
    drill.set_defaults(func=_drill)


def add_demo_command(sub: Any) -> None:
    """Add ``demo`` (and ``demo drill``) to the product CLI's subparsers ``sub``."""
    demo = sub.add_parser(
        "demo",
        help="run the local demo stack",
        description="Start the architecture on 127.0.0.1 (HAProxy pair with a VIP, four app servers in two "
        "regions, Redis master/replicas with a backup pair, PostgreSQL primary/replicas/DR replica, write "
        "addresses) and the whole kit watching and repairing it: the exporter, Prometheus with the rules, "
        "Alertmanager with the routes and the recovery service. Ctrl-C stops everything and removes its "
        "data.",
    )
    demo.add_argument(
        "--sentinel", action="store_true", help="also run 3 Redis Sentinels in charge of failover"
    )
    demo.add_argument(
        "--profile",
        choices=["default", "scale"],
        default="default",
        help="scale: the HA chain (Prometheus pair, Alertmanager peers, recovery replicas with etcd) "
        "remote-writing to VictoriaMetrics, with vmalert running the rules on it (docs/ha.md)",
    )
    demo.set_defaults(func=_demo)
    _add_drill_parser(demo)
