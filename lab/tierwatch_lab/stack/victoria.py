"""VictoriaMetrics (single node) and vmalert from Debian's ``victoria-metrics`` package, on free ports.

VictoriaMetrics takes Prometheus remote_write on ``/api/v1/write`` and answers the Prometheus query API
(``/api/v1/query``, ``/api/v1/query_range``); vmalert evaluates Prometheus rule files against it, writes
recording rules and ``ALERTS`` back through remote write, and sends alerts to Alertmanager.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

HOST = "127.0.0.1"
# rule fields vmalert v1.79 (Debian bookworm) does not know; newer releases accept them
UNKNOWN_TO_VMALERT = ("keep_firing_for",)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found; install the Debian package victoria-metrics")
    return path


@dataclass
class VictoriaMetrics:
    """A started single-node VictoriaMetrics and a client for its Prometheus-compatible API."""

    port: int
    process: ManagedProcess
    _client: httpx.Client = field(repr=False, default_factory=lambda: httpx.Client(timeout=10.0))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def write_url(self) -> str:
        """Where Prometheus (remote_write) or vmalert (-remoteWrite.url) send samples."""
        return f"{self.url}/api/v1/write"

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET ``/api/v1/<path>``; the whole answer (``status`` ``success`` or ``error`` with ``error``)."""
        response = self._client.get(f"{self.url}/api/v1/{path}", params=params)
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            return {"status": "error", "error": f"HTTP {response.status_code}: {response.text[:200]}"}
        return body

    def value(self, expr: str) -> float | None:
        """The value of the first sample of an instant query, or None."""
        body = self.api("query", query=expr)
        result = body.get("data", {}).get("result", []) if body.get("status") == "success" else []
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self._client.close()


@dataclass
class VmAlert:
    """A started vmalert."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def groups(self) -> list[dict[str, Any]]:
        """The rule groups with each rule's state (``lastError``, ``lastEvaluation``...)."""
        groups: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"][
            "groups"
        ]
        return groups

    def rule_errors(self) -> list[tuple[str, str, str]]:
        """``(group, rule, last error)`` of every rule whose last evaluation failed."""
        return [
            (group["name"], rule["name"], rule["lastError"])
            for group in self.groups()
            for rule in group["rules"]
            if rule.get("lastError")
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        alerts: list[dict[str, Any]] = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"][
            "alerts"
        ]
        return alerts


def start_victoria_metrics(
    stack: Stack, name: str = "victoria-metrics", dedup_interval: str | None = None
) -> VictoriaMetrics:
    """Start VictoriaMetrics with its own data dir; queries see samples 1 s old (not 30 s, the default).
    ``dedup_interval``: keep one sample per series per interval (``-dedup.minScrapeInterval``), for
    writers that send the same series, such as a Prometheus HA pair (:func:`pair_remote_write`)."""
    port = free_port()
    process = stack.spawn(
        name,
        [
            _binary("victoria-metrics"),
            f"-storageDataPath={stack.directory(name, 'data')}",
            f"-httpListenAddr={HOST}:{port}",
            "-retentionPeriod=1d",
            "-search.latencyOffset=1s",
            "-loggerLevel=WARN",
            *([f"-dedup.minScrapeInterval={dedup_interval}"] if dedup_interval else []),
        ],
    )
    server = VictoriaMetrics(port, process)
    stack.on_close(server.close)

    def ready() -> bool:
        process.check_alive()
        return httpx.get(f"{server.url}/health", timeout=2).status_code == 200

    wait_for(ready, 30, "victoria-metrics ready")
    return server


def pair_remote_write(
    victoria: VictoriaMetrics, replica_label: str = "replica", deadline: str = "1s"
) -> dict[str, Any]:
    """The ``remote_write`` entry for each Prometheus of an HA pair: without the external label that
    tells the replicas apart, so both send the same series and VictoriaMetrics (started with a
    ``dedup_interval``) keeps one copy that has no gap while either replica is up. With the label kept
    the store holds two copies of every series, and rules that match series one-to-one
    (``on (...)``, ``group_left``) fail there: "duplicate time series". Batches leave at least every
    ``deadline`` (Prometheus' default is 5 s)."""
    return {
        "url": victoria.write_url,
        "write_relabel_configs": [{"action": "labeldrop", "regex": replica_label}],
        "queue_config": {"batch_send_deadline": deadline},
    }


def rules_for_vmalert(
    sources: Iterable[Path], directory: Path, for_values: Mapping[str, str] = {}
) -> list[Path]:
    """Copies of rule files without the fields vmalert v1.79 refuses (``keep_firing_for``), and with
    the ``for`` of the alerts named in ``for_values`` changed (as stack.prometheus.rules_with_for)."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        data = yaml.safe_load(source.read_text())
        for group in data.get("groups", []):
            for rule in group.get("rules", []):
                for unknown in UNKNOWN_TO_VMALERT:
                    rule.pop(unknown, None)
                value = for_values.get(rule.get("alert", ""), for_values.get("*"))
                if "alert" in rule and value is not None and "for" in rule:
                    rule["for"] = value
        target = directory / source.name
        target.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
        copies.append(target)
    return copies


def vmalert_dry_run(rule_files: Sequence[Path]) -> tuple[int, str]:
    """``vmalert -dryRun``: parse and validate the rule files and their expressions; (exit code, output)."""
    import subprocess

    argv = [_binary("vmalert"), "-dryRun", *(f"-rule={path}" for path in rule_files)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def start_vmalert(
    stack: Stack,
    rule_files: Sequence[Path],
    datasource: VictoriaMetrics,
    alertmanagers: Sequence[str],
    name: str = "vmalert",
    evaluation_interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
) -> VmAlert:
    """Start vmalert on ``rule_files`` against ``datasource``, writing recording rules and ALERTS back to
    it, sending alerts to every ``host:port`` in ``alertmanagers`` (v1.79 needs at least one).
    ``external_labels`` go on every alert and recorded series it makes (besides ``alertgroup``, the
    rule group's name, which vmalert adds to every alert)."""
    port = free_port()
    notify = [f"-notifier.url=http://{address}" for address in alertmanagers]
    process = stack.spawn(
        name,
        [
            _binary("vmalert"),
            *(f"-rule={path}" for path in rule_files),
            f"-datasource.url={datasource.url}",
            f"-remoteWrite.url={datasource.url}",
            f"-remoteRead.url={datasource.url}",
            *notify,
            *(f"-external.label={key}={value}" for key, value in (external_labels or {}).items()),
            f"-httpListenAddr={HOST}:{port}",
            f"-evaluationInterval={evaluation_interval}",
            "-loggerLevel=WARN",
        ],
    )
    vmalert = VmAlert(port, process)

    def ready() -> bool:
        process.check_alive()
        return httpx.get(f"{vmalert.url}/health", timeout=2).status_code == 200

    wait_for(ready, 30, "vmalert ready")
    return vmalert
