"""The whole monitoring and recovery chain around a set of clusters: the exporter, Prometheus with the
kit's rules, Alertmanager with the kit's routes, and the recovery service — real processes, wired as
in production (job names ``tierwatch`` and ``tierwatch-recovery``, bearer-token webhook).

Used by the end-to-end tests, the failover benchmark and ``tierwatch demo``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..kit import kit_dir
from .alertmanager import (
    Alertmanager,
    rewrite_for_test,
    start_alertmanager,
    start_alertmanager_cluster,
    with_recovery_webhooks,
)
from .etcd import EtcdCluster, start_etcd_cluster
from .haproxy import HAProxy
from .process import Stack
from .prometheus import (
    PrometheusServer,
    ScrapeJob,
    rules_with_for,
    start_prometheus,
    start_prometheus_pair,
)
from .tierwatch import TierwatchProcess, start_exporter, start_recovery


@dataclass(frozen=True)
class ChainTiming:
    """How fast the chain reacts: probe cadence, scrape/evaluation cadence, and the alerts' ``for``."""

    probe_interval: str = "1s"
    probe_timeout: str = "500ms"
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    for_values: tuple[tuple[str, str], ...] = ()
    # the exporter's circuit breaker re-tries a target this long after it opened; None: the default
    # (30 s, six 5 s intervals). The demo keeps that ratio at its 1 s interval, so a returning old
    # primary is seen (and demoted) within seconds, as Sentinel's 1 s pings see it.
    breaker_reset: str | None = None

    def exporter_sections(self) -> dict[str, Any]:
        """The ``monitor`` (and ``circuit_breaker``) sections of an exporter config."""
        monitor = {"interval": self.probe_interval, "timeout": self.probe_timeout}
        sections: dict[str, Any] = {"monitor": monitor}
        if self.breaker_reset is not None:
            sections["circuit_breaker"] = {"reset_timeout": self.breaker_reset}
        return sections


@dataclass
class Chain:
    """The started chain."""

    exporter: TierwatchProcess
    recovery: TierwatchProcess
    prometheus: PrometheusServer
    alertmanager: Alertmanager  # the first peer
    state_dir: Path
    alertmanagers: list[Alertmanager] = field(default_factory=list)  # every peer of the cluster
    recoveries: list[TierwatchProcess] = field(default_factory=list)  # every recovery replica
    state_dirs: list[Path] = field(default_factory=list)  # theirs, in the same order
    etcd: EtcdCluster | None = None  # the replicas' lease store (recovery_replicas > 1)
    prometheuses: list[PrometheusServer] = field(default_factory=list)  # both of a pair (replica a, b)
    exporters: list[TierwatchProcess] = field(default_factory=list)  # one per vantage point


def start_chain(
    stack: Stack,
    clusters: list[dict[str, Any]],
    recovery: dict[str, Any],
    timing: ChainTiming = ChainTiming(),
    recovery_only: Sequence[dict[str, Any]] = (),
    extra_jobs: Sequence[ScrapeJob] = (),
    alertmanager_peers: int = 1,
    recovery_replicas: int = 1,
    prometheus_replicas: int = 1,
    vantages: Sequence[str] = (),
    vantage_exporters: Sequence[tuple[str, str]] = (),
    remote_write: Sequence[str | dict[str, Any]] = (),
    backups: dict[str, Any] | None = None,
    service_discovery: dict[str, Any] | None = None,
) -> Chain:
    """Start exporter, recovery service, Alertmanager and Prometheus for ``clusters``.

    ``recovery`` is the recovery section without ``auth`` and ``state_dir`` (both made here);
    ``recovery_only`` are clusters only the recovery service knows (such as the write LBs whose
    runtime sockets it drives but which have no health URL to probe); ``extra_jobs`` are more scrape
    jobs for Prometheus (the real-traffic jobs ``haproxy`` and ``app``: stack/scrape_targets.py).
    ``prometheus_replicas`` 2: an HA pair (external label ``replica`` a/b); ``vantages``: one exporter
    per name, scraped with that ``vantage`` label (docs/ha.md); ``vantage_exporters``: (vantage,
    host:port) of more exporters the caller started (e.g. in a network namespace), scraped the same
    way (the chain's own exporter is then ``primary`` unless ``vantages`` names it); ``remote_write``:
    remote_write entries (or URLs) of every Prometheus (e.g. VictoriaMetrics: lab/demo_scale.py);
    ``backups``: the exporter config's ``backups:`` section (the file ``tierwatch restore-test`` reads);
    ``service_discovery``: both configs' DNS records (the exporter checks them, recovery moves them)."""
    token = secrets.token_urlsafe(24)
    secrets_dir = stack.directory("chain-secrets")
    token_file = secrets_dir / "recovery-token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    state_dir = stack.directory("recovery-state")

    sections = timing.exporter_sections()
    exporter_config = stack.path("chain", "exporter.yml")
    exporter_document: dict[str, Any] = {**sections, "log": {"format": "json"}, "clusters": clusters}
    if backups is not None:
        exporter_document["backups"] = backups
    dns = {"service_discovery": service_discovery} if service_discovery is not None else {}
    exporter_document.update(dns)
    exporter_config.write_text(yaml.safe_dump(exporter_document, sort_keys=False))
    settings = {"state_dir": str(state_dir), "auth": {"bearer_token_file": str(token_file)}, **recovery}
    recovery_config = stack.path("chain", "recovery.yml")
    recovery_config.write_text(yaml.safe_dump(
        {**sections, "log": {"format": "json"}, "clusters": [*clusters, *recovery_only],
         "recovery": settings, **dns},
        sort_keys=False))  # fmt: skip

    exporters = [
        start_exporter(stack, exporter_config, name=f"exporter-{vantage}") for vantage in vantages
    ] or [start_exporter(stack, exporter_config)]
    exporter = exporters[0]
    # more than one recovery replica: a lease in a 3-member etcd, each its own state (docs/ha.md)
    etcd = start_etcd_cluster(stack) if recovery_replicas > 1 else None
    recoveries, state_dirs = [], [state_dir]
    if etcd is None:
        recoveries.append(start_recovery(stack, recovery_config))
    else:
        state_dirs = [
            state_dir,
            *(stack.directory(f"recovery-state-{i}") for i in range(1, recovery_replicas)),
        ]
        for i, directory in enumerate(state_dirs):
            replica = {
                **settings,
                "state_dir": str(directory),
                "ha": {"etcd": etcd.endpoints, "name": f"r{i}"},
            }
            path = stack.path("chain", f"recovery-{i}.yml")
            path.write_text(yaml.safe_dump(
                {**sections, "log": {"format": "json"}, "clusters": [*clusters, *recovery_only],
                 "recovery": replica, **dns}, sort_keys=False))  # fmt: skip
            recoveries.append(start_recovery(stack, path, name=f"recovery-{i}"))
    recoverer = recoveries[0]
    am_text = with_recovery_webhooks(
        rewrite_for_test((kit_dir("alertmanager") / "alertmanager.yml").read_text(), secrets_dir),
        [f"{r.url}/webhook" for r in recoveries],
    )
    # more than one peer: a gossiping cluster, Prometheus sends to every peer (docs/ha.md)
    peers = (
        start_alertmanager_cluster(stack, am_text, alertmanager_peers)
        if alertmanager_peers > 1
        else [start_alertmanager(stack, am_text)]
    )
    rule_files = sorted(kit_dir("rules").glob("*.rules.yml"))
    rules = rules_with_for(rule_files, stack.directory("chain", "rules"), dict(timing.for_values))
    scrape_exporters = ScrapeJob("tierwatch", [exporter.address])
    if vantages:  # one static config per exporter, labelled with its vantage point
        labelled = zip(exporters, vantages, strict=True)
        static = [{"targets": [e.address], "labels": {"vantage": v}} for e, v in labelled]
        scrape_exporters = ScrapeJob("tierwatch", [], options={"static_configs": static})
    jobs = [scrape_exporters, ScrapeJob("tierwatch-recovery", [r.address for r in recoveries])]
    if vantage_exporters:  # exporters started by the caller, each with its vantage label too
        own = zip(vantages or ("primary",), (e.address for e in exporters), strict=True)
        static = [{"targets": [a], "labels": {"vantage": v}} for v, a in [*own, *vantage_exporters]]
        jobs[0] = ScrapeJob("tierwatch", [], options={"static_configs": static})
    options = {
        "scrape_interval": timing.scrape_interval,
        "evaluation_interval": timing.evaluation_interval,
        "alertmanagers": [f"127.0.0.1:{peer.port}" for peer in peers],
        "remote_write": remote_write,
    }
    prometheuses = (
        start_prometheus_pair(stack, [*jobs, *extra_jobs], rules, **options)
        if prometheus_replicas > 1
        else [start_prometheus(stack, [*jobs, *extra_jobs], rules, **options)]
    )
    return Chain(
        exporter, recoverer, prometheuses[0], peers[0], state_dir, peers, recoveries, state_dirs, etcd,
        prometheuses, exporters,
    )  # fmt: skip


def audit_trail(state_dir: Path) -> list[dict[str, Any]]:
    """The audit trail so far of the recovery replica with this state directory (empty before any)."""
    import json

    path = state_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit(chain: Chain) -> list[dict[str, Any]]:
    """The recovery service's audit trail so far (every replica's, in time order)."""
    entries = [entry for d in chain.state_dirs or [chain.state_dir] for entry in audit_trail(d)]
    return sorted(entries, key=lambda entry: entry["ts"])


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
