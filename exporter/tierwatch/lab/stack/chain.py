"""The whole monitoring and recovery chain around a set of clusters: the exporter, Prometheus with the
kit's rules, Alertmanager with the kit's routes, and the recovery service — real processes, wired as
in production (job names ``tierwatch`` and ``tierwatch-recovery``, bearer-token webhook).

Used by the end-to-end tests, the failover benchmark and ``tierwatch demo``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..kit import kit_dir
from .alertmanager import Alertmanager, rewrite_for_test, start_alertmanager
from .haproxy import HAProxy
from .process import Stack
from .prometheus import PrometheusServer, ScrapeJob, rules_with_for, start_prometheus
from .tierwatch import TierwatchProcess, start_exporter, start_recovery


@dataclass(frozen=True)
class ChainTiming:
    """How fast the chain reacts: probe cadence, scrape/evaluation cadence, and the alerts' ``for``."""

    probe_interval: str = "1s"
    probe_timeout: str = "500ms"
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    for_values: tuple[tuple[str, str], ...] = ()


@dataclass
class Chain:
    """The started chain."""

    exporter: TierwatchProcess
    recovery: TierwatchProcess
    prometheus: PrometheusServer
    alertmanager: Alertmanager
    state_dir: Path


def start_chain(
    stack: Stack,
    clusters: list[dict[str, Any]],
    recovery: dict[str, Any],
    timing: ChainTiming = ChainTiming(),
    recovery_only: Sequence[dict[str, Any]] = (),
) -> Chain:
    """Start exporter, recovery service, Alertmanager and Prometheus for ``clusters``.

    ``recovery`` is the recovery section without ``auth`` and ``state_dir`` (both made here);
    ``recovery_only`` are clusters only the recovery service knows (such as the write LBs whose
    runtime sockets it drives but which have no health URL to probe)."""
    token = secrets.token_urlsafe(24)
    secrets_dir = stack.directory("chain-secrets")
    token_file = secrets_dir / "recovery-token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    state_dir = stack.directory("recovery-state")

    monitor = {"interval": timing.probe_interval, "timeout": timing.probe_timeout}
    exporter_config = stack.path("chain", "exporter.yml")
    exporter_config.write_text(
        yaml.safe_dump({"monitor": monitor, "log": {"format": "json"}, "clusters": clusters}, sort_keys=False)
    )
    settings = {"state_dir": str(state_dir), "auth": {"bearer_token_file": str(token_file)}, **recovery}
    recovery_config = stack.path("chain", "recovery.yml")
    recovery_config.write_text(yaml.safe_dump(
        {"monitor": monitor, "log": {"format": "json"}, "clusters": [*clusters, *recovery_only],
         "recovery": settings},
        sort_keys=False))  # fmt: skip

    exporter = start_exporter(stack, exporter_config)
    recoverer = start_recovery(stack, recovery_config)
    am_text = rewrite_for_test(
        (kit_dir("alertmanager") / "alertmanager.yml").read_text(), secrets_dir, f"{recoverer.url}/webhook"
    )
    manager = start_alertmanager(stack, am_text)
    rule_files = sorted(kit_dir("rules").glob("*.rules.yml"))
    rules = rules_with_for(rule_files, stack.directory("chain", "rules"), dict(timing.for_values))
    prometheus = start_prometheus(
        stack,
        [ScrapeJob("tierwatch", [exporter.address]), ScrapeJob("tierwatch-recovery", [recoverer.address])],
        rules,
        scrape_interval=timing.scrape_interval,
        evaluation_interval=timing.evaluation_interval,
        alertmanagers=[f"127.0.0.1:{manager.port}"],
    )
    return Chain(exporter, recoverer, prometheus, manager, state_dir)


def audit(chain: Chain) -> list[dict[str, Any]]:
    """The recovery service's audit trail so far."""
    import json

    path = chain.state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_lb_cluster(name: str, lbs: Sequence[HAProxy]) -> dict[str, Any]:
    """A config entry for write LBs: the recovery service finds their runtime sockets through it (it
    is passed as ``recovery_only``; write LBs have no health URL for the exporter to probe)."""
    return {
        "name": name,
        "tier": "lb",
        "targets": [
            {"name": lb.name, "region": "primary", "url": f"http://127.0.0.1:{lb.port}/",
             "stats_socket": str(lb.stats_socket)}
            for lb in lbs
        ],
    }  # fmt: skip


def redis_cluster(
    name: str, servers: Sequence[Any], password_file: Path, region: str = "primary"
) -> dict[str, Any]:
    """A config entry for a Redis cluster of started servers (stack.redis.RedisServer)."""
    return {
        "name": name,
        "tier": "redis",
        "password_file": str(password_file),
        "targets": [{"name": s.name, "region": region, "url": s.url} for s in servers],
    }
