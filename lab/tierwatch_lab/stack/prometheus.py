"""A real Prometheus server (the Debian ``prometheus`` binary) on a free port with its own data dir.

Used by the live rule tests and the demo: it scrapes the given targets, loads the given rule files and
answers the HTTP API (``/api/v1/query``, ``/api/v1/alerts``) through the small helpers below.
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


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: a job name and the ``host:port`` addresses it scrapes."""

    name: str
    targets: Sequence[str]
    metrics_path: str = "/metrics"
    # more scrape settings, e.g. scheme, tls_config, basic_auth
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PrometheusServer:
    """A started Prometheus and a client for its HTTP API."""

    port: int
    process: ManagedProcess
    config_path: Path
    data_dir: Path
    _client: httpx.Client = field(repr=False, default_factory=lambda: httpx.Client(timeout=10.0))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data`` (raises StackError on an API error)."""
        response = self._client.get(f"{self.url}/api/v1/{path}", params=params)
        body = response.json()
        if body.get("status") != "success":
            raise StackError(f"Prometheus API {path} failed: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector as ``[{"metric": {...}, "value": [ts, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise StackError(f"query {expr!r} returned a {data['resultType']}, not a vector")
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The value of the single sample ``expr`` returns, or None if it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise StackError(f"query {expr!r} returned {len(result)} samples, expected one")
        return float(result[0]["value"][1])

    def alerts(self, name: str | None = None, **labels: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts, optionally only those named ``name`` carrying ``labels``."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [
            alert
            for alert in found
            if (name is None or alert["labels"].get("alertname") == name)
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]

    def alert_state(self, name: str, **labels: str) -> str:
        """``firing``, ``pending`` or ``inactive`` for the alert ``name`` with these labels."""
        states = {alert["state"] for alert in self.alerts(name, **labels)}
        if "firing" in states:
            return "firing"
        if "pending" in states:
            return "pending"
        return "inactive"

    def rule_health(self) -> list[tuple[str, str, str]]:
        """``(rule name, health, last error)`` of every loaded rule whose health is not ``ok``."""
        bad = []
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                if rule.get("health") not in ("ok", "unknown"):
                    bad.append((rule["name"], rule.get("health", ""), rule.get("lastError", "")))
        return bad

    def targets_up(self) -> bool:
        """True once every scrape target has been scraped successfully."""
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)

    def close(self) -> None:
        self._client.close()


def prometheus_config(
    jobs: Iterable[ScrapeJob],
    rule_files: Iterable[Path],
    *,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanagers: Sequence[str] = (),
    external_labels: Mapping[str, str] | None = None,
    remote_write: Sequence[str | Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The prometheus.yml content as a dict (``alertmanagers``: ``host:port`` to send alerts to, every
    peer of a cluster; ``remote_write``: URLs to send every sample to, or whole remote_write entries)."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
            **({"external_labels": dict(external_labels)} if external_labels else {}),
        },
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": job.name,
                "metrics_path": job.metrics_path,
                "static_configs": [{"targets": list(job.targets)}],
                **job.options,
            }
            for job in jobs
        ],
    }
    if remote_write:
        config["remote_write"] = [{"url": url} if isinstance(url, str) else dict(url) for url in remote_write]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return config


def rules_with_for(sources: Iterable[Path], directory: Path, for_values: dict[str, str]) -> list[Path]:
    """Copies of rule files in ``directory`` where the alerts named in ``for_values`` get that ``for``
    (key ``*``: every alert); nothing else changes. For tests and tuned fast-failover setups."""
    copies = []
    directory.mkdir(parents=True, exist_ok=True)
    for source in sources:
        data = yaml.safe_load(source.read_text())
        for group in data.get("groups", []):
            for rule in group.get("rules", []):
                name = rule.get("alert")
                value = for_values.get(name, for_values.get("*")) if name else None
                if value is not None and "for" in rule:
                    rule["for"] = value
        target = directory / source.name
        target.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
        copies.append(target)
    return copies


def start_prometheus(
    stack: Stack,
    jobs: Iterable[ScrapeJob],
    rule_files: Iterable[Path] = (),
    *,
    name: str = "prometheus",
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanagers: Sequence[str] = (),
    ready_timeout: float = 30.0,
    external_labels: Mapping[str, str] | None = None,
    remote_write: Sequence[str | Mapping[str, Any]] = (),
) -> PrometheusServer:
    """Write a config, start Prometheus on a free port with its own data dir, wait until it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("prometheus not found; install the Debian package prometheus")
    directory = stack.directory(name)
    data_dir = stack.directory(name, "data")
    config_path = directory / "prometheus.yml"
    config = prometheus_config(
        jobs,
        rule_files,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        alertmanagers=alertmanagers,
        external_labels=external_labels,
        remote_write=remote_write,
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = stack.spawn(
        name,
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={HOST}:{port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ],
        cwd=directory,
    )
    server = PrometheusServer(port=port, process=process, config_path=config_path, data_dir=data_dir)
    stack.on_close(server.close)

    def ready() -> bool:
        process.check_alive()
        return httpx.get(f"{server.url}/-/ready", timeout=2.0).status_code == 200

    try:
        wait_for(ready, ready_timeout, f"prometheus to be ready on port {port}")
    except StackError as exc:
        raise StackError(f"{exc}\n{process.log_tail()}") from None
    return server


def start_prometheus_pair(
    stack: Stack,
    jobs: Sequence[ScrapeJob],
    rule_files: Sequence[Path] = (),
    *,
    alertmanagers: Sequence[str] = (),
    label: str = "replica",
    **options: Any,
) -> list[PrometheusServer]:
    """An HA pair: two Prometheus servers with the same jobs and rules, told apart only by the external
    label ``label`` (``a`` and ``b``); both send their alerts to every Alertmanager peer."""
    return [
        start_prometheus(
            stack,
            jobs,
            rule_files,
            name=f"prometheus-{replica}",
            alertmanagers=alertmanagers,
            external_labels={label: replica},
            **options,
        )
        for replica in ("a", "b")
    ]
