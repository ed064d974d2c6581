"""``tierwatch demo --profile scale``: the demo with every watcher redundant and a global store.

The default demo's servers (demo_build.py), watched by the HA chain of docs/ha.md: a Prometheus pair
(external label ``replica`` a/b) that remote-writes every sample to one VictoriaMetrics, the long-term
and global store; two gossiping Alertmanager peers; two recovery replicas with a lease in a 3-member
etcd; and vmalert evaluating the kit's rules against VictoriaMetrics, sending to both peers.

**One copy of each series in the store.** Both replicas write every series without their ``replica``
label and VictoriaMetrics keeps one sample per series per second (``-dedup.minScrapeInterval``): the
store has no gap while either replica is up. Kept apart by ``replica``, the store held two copies of
everything and five or more of the kit's rules failed on vmalert ("duplicate time series" in ``on``/
``group_left`` matches), measured with this profile.

**vmalert runs beside the pair's rule evaluation, not instead of it.** The pair stays the alerting
path: it evaluates on its own fresh data, survives the loss of one replica and of VictoriaMetrics
(which would otherwise be a single point of failure for alerting), and its timing is the one the
drills measure. vmalert shows the rules run unchanged on the global store and alerts from it. Its
recorded series are the pair's (same names, same labels: deduplicated with them); its alerts carry
``alertgroup`` (vmalert adds the group's name to every alert). So every incident reaches the recovery
service up to three times, from replica a, replica b and vmalert; the profile sets the recovery
service's ``replica_labels`` to :data:`REPLICA_LABELS`, so the copies form one incident.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from .demo_build import DemoOptions, build
from .demo_stack import ACTION_ALERTS, TRAFFIC_ALERTS, WINDOW, DemoStack
from .kit import kit_dir
from .stack import Stack
from .stack.chain import ChainTiming
from .stack.victoria import (
    VictoriaMetrics,
    VmAlert,
    pair_remote_write,
    rules_for_vmalert,
    start_victoria_metrics,
    start_vmalert,
)

SCALE_REQUIRED = {
    "victoria-metrics": "victoria-metrics",
    "vmalert": "victoria-metrics",
    "etcd": "etcd-server",
}
# the recovery service's default replica labels, plus the one that tells vmalert's copy of an alert apart
REPLICA_LABELS = ("replica", "prometheus", "prometheus_replica", "alertgroup")
VMALERT_INTERVAL = "5s"  # its data arrives in remote-write batches (Prometheus flushes at most 5 s apart)


@dataclass
class ScaleDemo:
    """The demo stack plus the global store and the rule engine that reads it."""

    demo: DemoStack
    victoria: VictoriaMetrics
    vmalert: VmAlert


def missing_scale_packages() -> list[str]:
    """Debian packages the scale profile needs beyond the default demo's."""
    return sorted({package for binary, package in SCALE_REQUIRED.items() if shutil.which(binary) is None})


def build_scale(stack: Stack, *, sentinel: bool = False, recovery_replicas: int = 2) -> ScaleDemo:
    """Start VictoriaMetrics, the demo with the HA chain remote-writing to it, then vmalert."""
    victoria = start_victoria_metrics(stack, dedup_interval="1s")
    timing = ChainTiming(for_values=tuple((n, WINDOW) for n in (*ACTION_ALERTS, *TRAFFIC_ALERTS)))
    options = DemoOptions(
        sentinel=sentinel,
        timing=timing,
        recovery_replicas=recovery_replicas,
        prometheus_replicas=2,
        remote_write=[pair_remote_write(victoria)],
        replica_labels=REPLICA_LABELS,
    )
    demo = build(stack, options)
    assert demo.chain is not None
    chain = demo.chain
    rules = rules_for_vmalert(
        sorted(kit_dir("rules").glob("*.rules.yml")),
        stack.directory("vmalert-rules"),
        dict(timing.for_values),
    )
    vmalert = start_vmalert(
        stack,
        rules,
        victoria,
        [f"127.0.0.1:{peer.port}" for peer in chain.alertmanagers],
        evaluation_interval=VMALERT_INTERVAL,
    )
    a, b = chain.prometheuses
    etcd = chain.etcd.endpoints if chain.etcd else []
    audits = [str(directory / "audit.jsonl") for directory in chain.state_dirs]
    scale = {
        "Prometheus": f"replica a {a.url}/alerts, replica b {b.url}/alerts  (external label replica; "
        "both evaluate the rules and remote-write every sample, without that label, to VictoriaMetrics)",
        "Alertmanager": f"{', '.join(peer.url for peer in chain.alertmanagers)}  (gossiping peers)",
        "Recovery": f"{', '.join(f'{r.url}/metrics' for r in chain.recoveries)}  (replicas, one lease in "
        f"etcd {', '.join(etcd)}); audit trails {', '.join(audits)}",
    }
    summary = [
        f"{line.split()[0]:<15}{scale[line.split()[0]]}" if line.split()[0] in scale else line
        for line in demo.summary
    ]
    summary[-1:-1] = [
        f"VictoriaMetrics {victoria.url}  long-term/global store (1 d here): every series the Prometheus "
        "pair scrapes and records (exporter, recovery, node, HAProxy and app; recording rules; ALERTS), "
        "written by both replicas, one copy kept (deduplicated per 1 s), and vmalert's recording rules "
        f"and ALERTS; query API {victoria.url}/api/v1/query, UI {victoria.url}/vmui",
        f"vmalert        {vmalert.url}/api/v1/rules  (the kit's rules on VictoriaMetrics every "
        f"{VMALERT_INTERVAL}, alerts to both Alertmanager peers; duplicates are one incident: "
        f"recovery.replica_labels {', '.join(REPLICA_LABELS)})",
    ]
    demo.summary = summary
    return ScaleDemo(demo, victoria, vmalert)
