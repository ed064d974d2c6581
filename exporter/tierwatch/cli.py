"""The ``tierwatch`` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from . import __version__
from .config import ConfigError, LoadedConfig, load_config


def _load(path: str, resolve_secrets: bool = True) -> LoadedConfig | None:
    """The config at ``path``, or None after printing every problem (file:line: key.path: expectation)."""
    try:
        return load_config(path, resolve_secrets=resolve_secrets)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s) found", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    loaded = _load(args.file, resolve_secrets=not args.no_secrets)
    if loaded is None:
        return 1
    cfg = loaded.config
    targets = sum(len(c.targets) + (len(c.sentinel.targets) if c.sentinel else 0) for c in cfg.clusters)
    sources = sum(len(c.discovery) for c in cfg.clusters)
    found = f", {sources} discovery sources" if sources else ""
    print(f"{args.file}: OK ({len(cfg.clusters)} clusters, {targets} targets{found})")
    return 0


def _run_service(command: str, config: str, main: Callable[[LoadedConfig], Coroutine[Any, Any, None]]) -> int:
    """Load ``config`` (listing every problem on failure), then run ``main`` until it returns."""
    import signal

    # SIGHUP reloads once the service runs (its handler replaces this); while it starts, SIGHUP's
    # default would kill it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    loaded = _load(config)
    if loaded is None:
        return 1
    try:
        asyncio.run(main(loaded))
    except (OSError, ValueError) as exc:
        print(f"tierwatch {command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _web_config(path: str | None) -> tuple[bool, Any]:
    """(True, the web config at ``path`` or None without one), or (False, None) after printing every
    problem of the file."""
    if path is None:
        return True, None
    from .web_config import WebConfigError, load_web_config

    try:
        return True, load_web_config(path)
    except WebConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s) found", file=sys.stderr)
        return False, None


def _serve(args: argparse.Namespace) -> int:
    from .server import run_exporter

    ok, web = _web_config(args.web_config_file)
    if not ok:
        return 1
    shard = None
    if args.shard is not None:
        from .config.shard import parse_shard

        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            print(f"tierwatch serve: {exc}", file=sys.stderr)
            return 2
    return _run_service(
        "serve", args.config, lambda loaded: run_exporter(loaded, args.listen, web=web, shard=shard)
    )


def _recover(args: argparse.Namespace) -> int:
    from .recovery.service import run_recovery

    ok, web = _web_config(args.web_config_file)
    if not ok:
        return 1
    return _run_service(
        "recover",
        args.config,
        lambda loaded: run_recovery(loaded, args.listen, dry_run=args.dry_run or None, web=web),
    )


def _traffic(args: argparse.Namespace) -> int:
    from .recovery.actions.traffic import set_server_state

    loaded = _load(args.config, resolve_secrets=False)
    if loaded is None:
        return 1
    cluster = next((c for c in loaded.config.clusters if c.name == args.cluster), None)
    if cluster is None or cluster.tier != "app":
        print(f"tierwatch traffic: no app cluster named {args.cluster!r} in {args.config}", file=sys.stderr)
        return 1
    servers = [t.name for t in cluster.targets if t.region == args.region or t.name in (args.target or ())]
    if not servers:
        print("tierwatch traffic: no target matches --region/--target", file=sys.stderr)
        return 1
    recovery = loaded.config.recovery
    settings = recovery.clusters.get(cluster.name) if recovery else None
    backend = args.backend or (settings.app_backend if settings else "be_app")
    problems = asyncio.run(set_server_state(loaded, backend, servers, args.operation))
    for problem in problems:
        print(f"tierwatch traffic: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.operation}: {', '.join(servers)} in {backend} on every LB that has it")
    return 1 if problems else 0


def _target_time(text: str | None, command: str) -> tuple[bool, Any]:
    """(True, the aware datetime of ISO 8601 ``text`` or None), or (False, None) after printing why."""
    if text is None:
        return True, None
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        print(
            f"tierwatch {command}: --target-time: expected ISO 8601 with a UTC offset, "
            "e.g. 2025-01-31T14:05:00Z or 2025-01-31T15:05:00+01:00",
            file=sys.stderr,
        )
        return False, None
    return True, value


def _restore_test(args: argparse.Namespace) -> int:
    from .restore.commands import restore_test

    ok, target = _target_time(args.target_time, "restore-test")
    loaded = _load(args.config) if ok else None
    if loaded is None:
        return 2
    return restore_test(loaded, args.backup, target)


def _pitr(args: argparse.Namespace) -> int:
    from .restore.commands import pitr

    ok, target = _target_time(args.target_time, "pitr")
    loaded = _load(args.config) if ok else None
    if loaded is None:
        return 2
    return pitr(loaded, args.backup, target, args.data_dir, args.port, promote=args.promote)


def _redis_snapshot(args: argparse.Namespace) -> int:
    from .restore.commands import redis_snapshot

    loaded = _load(args.config)
    if loaded is None:
        return 2
    return redis_snapshot(loaded, args.backup)


def _add_backup_commands(sub: Any) -> None:
    """restore-test, pitr and redis-snapshot (the config's ``backups:``; docs/backups.md)."""
    restore = sub.add_parser(
        "restore-test",
        help="restore each backup set into scratch space and verify it",
        description="Restore the newest backup of each set (or --backup NAME) into a new directory below "
        "backups.scratch_dir, start a throwaway server on it, run the set's checks, measure RTO and RPO, "
        "write the results for node_exporter's textfile collector and one audit line, remove everything. "
        "Exit 0 only when every set verified.",
    )
    restore.add_argument("--config", required=True, metavar="FILE", help="tierwatch YAML config")
    restore.add_argument("--backup", metavar="NAME", help="only this set of backups.sets")
    restore.add_argument(
        "--target-time", metavar="ISO8601", help="PostgreSQL: restore to this time instead of the newest"
    )
    restore.set_defaults(func=_restore_test)

    pitr = sub.add_parser(
        "pitr",
        help="restore a PostgreSQL set to a point in time into a NEW instance",
        description="Restore a PostgreSQL backup set to --target-time into a new, empty --data-dir and start "
        "it on 127.0.0.1:PORT, paused at the target (or promoted with --promote), left running for a "
        "person; prints how to connect, promote, copy data back and remove it. Never touches production.",
    )
    pitr.add_argument("--config", required=True, metavar="FILE", help="tierwatch YAML config")
    pitr.add_argument("--backup", required=True, metavar="NAME", help="a pgbackrest set of backups.sets")
    pitr.add_argument("--target-time", required=True, metavar="ISO8601", help="e.g. 2025-01-31T14:05:00Z")
    pitr.add_argument("--data-dir", required=True, metavar="DIR", help="a new or empty directory")
    pitr.add_argument("--port", required=True, type=int, metavar="PORT", help="a free TCP port")
    pitr.add_argument("--promote", action="store_true", help="promote at the target instead of pausing")
    pitr.set_defaults(func=_pitr)

    snapshot = sub.add_parser(
        "redis-snapshot",
        help="BGSAVE each Redis set's master and keep a copy of its RDB",
        description="For each redis set (or --backup NAME): find the cluster's master, BGSAVE, wait for it, "
        "copy the RDB atomically into the set's directory (named by UTC time), keep the newest `keep`, "
        "write textfile metrics and an audit line.",
    )
    snapshot.add_argument("--config", required=True, metavar="FILE", help="tierwatch YAML config")
    snapshot.add_argument("--backup", metavar="NAME", help="only this set of backups.sets")
    snapshot.set_defaults(func=_redis_snapshot)


def _service_arguments(parser: argparse.ArgumentParser, config: str, listen: str, web: str) -> None:
    """--config, --listen and --web.config.file of a long-running service (serve, recover)."""
    parser.add_argument("--config", required=True, metavar="FILE", help=config)
    parser.add_argument("--listen", metavar="HOST:PORT", help=f"address to serve on (default: {listen})")
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help=f"exporter-toolkit web config: {web}",
    )


def _demo_from_a_clone(args: argparse.Namespace) -> int:
    print(f"tierwatch demo: {NOT_A_CLONE}", file=sys.stderr)
    return 1


NOT_A_CLONE = (
    "tierwatch demo runs from a clone of the tierwatch repository (it needs rules/, alertmanager/ and "
    "demo/app/ from it, and the lab that ./scripts/setup installs from it): run it there"
)


def _add_demo(sub: Any, with_lab: bool) -> None:
    """``demo``: the lab's command (entry point ``tierwatch.commands``/``demo`` of the tierwatch-lab
    distribution, installed from a clone) when ``with_lab`` and installed; else a stub that says where
    the demo runs. Only ``tierwatch demo ...`` looks the lab up, so the product's commands never load it."""
    if with_lab:
        from importlib.metadata import entry_points

        for entry in entry_points(group="tierwatch.commands", name="demo"):
            try:
                add_command = entry.load()
            except ImportError:  # its metadata is there, its package not (a clone since removed)
                break
            add_command(sub)
            return
    demo = sub.add_parser("demo", help="run the local demo stack (from a clone of the repository)")
    demo.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    demo.set_defaults(func=_demo_from_a_clone)


def build_parser(with_lab: bool = False) -> argparse.ArgumentParser:
    """The argument parser with every subcommand; the lab's ``demo`` only ``with_lab``."""
    parser = argparse.ArgumentParser(
        prog="tierwatch", description="Prometheus exporter and recovery kit for an HA web stack."
    )
    parser.add_argument("--version", action="version", version=f"tierwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the exporter",
        description="Probe every target and serve /metrics, /health, /ready and a status page at /.",
    )
    _service_arguments(
        serve,
        "tierwatch YAML config",
        "config's listen, 127.0.0.1:9489",
        "TLS and basic auth for every endpoint (see the README)",
    )
    serve.add_argument(
        "--shard",
        metavar="I/N",
        help="probe only shard I (0-based) of N: the clusters whose name hashes to I (docs/ha.md)",
    )
    serve.set_defaults(func=_serve)

    recover = sub.add_parser(
        "recover",
        help="run the recovery service",
        description="Receive Alertmanager webhooks (POST /webhook) and run the allowed recovery action of "
        "each firing alert once, safely; see docs/operations.md.",
    )
    _service_arguments(
        recover,
        "tierwatch YAML config with a recovery: section",
        "recovery.listen",
        "TLS and basic auth for every endpoint, webhook included",
    )
    recover.add_argument("--dry-run", action="store_true", help="decide and audit, but change nothing")
    recover.set_defaults(func=_recover)

    _add_demo(sub, with_lab)

    traffic = sub.add_parser(
        "traffic",
        help="enable, drain or disable app servers on every LB",
        description="Put traffic back after a shift or a regional failover (enable: ready and weight 100%%), "
        "or drain/disable app servers by hand, through the runtime API of every LB in the config that has "
        "the app backend.",
    )
    traffic.add_argument("operation", choices=["enable", "drain", "disable"])
    traffic.add_argument("--config", required=True, metavar="FILE", help="tierwatch YAML config")
    traffic.add_argument("--cluster", required=True, help="the app cluster")
    traffic.add_argument("--region", help="every target of this region")
    traffic.add_argument("--target", action="append", help="a target (repeatable)")
    traffic.add_argument(
        "--backend", help="HAProxy backend (default: recovery.clusters.CLUSTER.app_backend, be_app)"
    )
    traffic.set_defaults(func=_traffic)

    _add_backup_commands(sub)

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config "
        "file; exit 0 if valid, else 1 with every problem listed (file:line: key.path: "
        "expectation).",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--no-secrets",
        action="store_true",
        help="do not read password files or "
        "environment variables (lint a config whose secrets are mounted only at run time)",
    )
    check.set_defaults(func=_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tierwatch`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_lab=argv[:1] == ["demo"]).parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
