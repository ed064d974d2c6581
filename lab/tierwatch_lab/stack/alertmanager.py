"""A real Alertmanager (Debian's prometheus-alertmanager) on free loopback ports, with its own data dir;
alone, or as a cluster of peers gossiping silences and the notification log (``--cluster.peer``)."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .ports import free_port
from .process import ManagedProcess, Stack, wait_for

BINARY_NAMES = ("prometheus-alertmanager", "alertmanager")


@dataclass
class Alertmanager:
    """A started Alertmanager and helpers for its v2 API."""

    port: int
    config_path: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, body: Any = None) -> Any:
        """GET (or POST ``body`` as JSON) an API v2 path and return the decoded answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v2/{path}", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus would (labels, annotations, startsAt)."""
        self.api("alerts", alerts)

    def cluster_peers(self) -> int:
        """How many peers this one sees in its cluster (itself included); 0 when not clustered."""
        status = self.api("status")
        return len(status.get("cluster", {}).get("peers") or [])

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert Alertmanager holds, with its status (active, suppressed, inhibitedBy)."""
        result: list[dict[str, Any]] = self.api("alerts?active=true&silenced=true&inhibited=true")
        return result


def binary() -> str:
    """The Alertmanager binary on this machine."""
    for name in BINARY_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("alertmanager not found: apt-get install prometheus-alertmanager")


def rewrite_for_test(config_text: str, secrets_dir: Path, webhook_url: str | None = None) -> str:
    """Point a production config's secret files into ``secrets_dir`` (created, with dummy contents
    unless already present) and optionally its recovery webhook at ``webhook_url``."""
    secrets_dir.mkdir(parents=True, exist_ok=True)

    def move(match: re.Match[str]) -> str:
        path = secrets_dir / Path(match.group(2)).name
        if not path.exists():
            path.write_text("https://hooks.example.invalid/x\n" if "url" in path.name else "test-secret\n")
        return f"{match.group(1)}{path}"

    text = re.sub(r"(_file: )(/etc/alertmanager/secrets/\S+)", move, config_text)
    if webhook_url:
        text = text.replace("http://127.0.0.1:9490/webhook", webhook_url)
    return text


LOCAL_RECOVERY_URL = "http://127.0.0.1:9490/webhook"  # the recovery webhook in alertmanager/alertmanager.yml


def with_recovery_webhooks(config_text: str, urls: Sequence[str]) -> str:
    """The config with its recovery webhook pointed at ``urls``: one URL replaces it in place; several
    (recovery replicas, docs/ha.md) become one ``webhook_configs`` entry each."""
    if len(urls) == 1:
        return config_text.replace(LOCAL_RECOVERY_URL, urls[0])
    config = yaml.safe_load(config_text)
    [receiver] = [r for r in config["receivers"] if r["name"] == "recovery"]
    [webhook] = receiver["webhook_configs"]
    receiver["webhook_configs"] = [{**webhook, "url": url} for url in urls]
    return str(yaml.safe_dump(config, sort_keys=False, width=1000))


def start_alertmanager(
    stack: Stack,
    config_text: str,
    name: str = "alertmanager",
    cluster_port: int | None = None,
    peers: Sequence[int] = (),
) -> Alertmanager:
    """Start Alertmanager with ``config_text`` and wait until it is ready: alone, or gossiping on
    ``cluster_port`` with the peers listening on ``peers``."""
    port = free_port()
    directory = stack.directory(name)
    config = directory / "alertmanager.yml"
    config.write_text(config_text)
    if cluster_port is None:
        cluster = ["--cluster.listen-address="]
    else:
        cluster = [
            f"--cluster.listen-address=127.0.0.1:{cluster_port}",
            f"--cluster.advertise-address=127.0.0.1:{cluster_port}",
            *(f"--cluster.peer=127.0.0.1:{peer}" for peer in peers),
            # loopback gossip settles fast; the peer timeout (15s) and the rest stay at their defaults
            "--cluster.settle-timeout=5s",
        ]
    argv = [
        binary(),
        f"--config.file={config}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *cluster,
        "--log.level=warn",
    ]
    proc = stack.spawn(name, argv)
    manager = Alertmanager(port, config, proc)

    def ready() -> bool:
        proc.check_alive()
        with urllib.request.urlopen(f"{manager.url}/-/ready", timeout=2) as response:
            return response.status == 200

    wait_for(ready, 20, "alertmanager ready")
    return manager


def start_alertmanager_cluster(
    stack: Stack, config_text: str, size: int = 3, name: str = "alertmanager"
) -> list[Alertmanager]:
    """Start ``size`` peers with real gossip (each lists the others as ``--cluster.peer``) and wait
    until every peer sees all of them."""
    gossip = [free_port() for _ in range(size)]
    peers = [
        start_alertmanager(
            stack, config_text, f"{name}-{i}", gossip[i], [p for p in gossip if p != gossip[i]]
        )
        for i in range(size)
    ]
    wait_for(lambda: all(peer.cluster_peers() == size for peer in peers), 30, f"{size} alertmanager peers")
    return peers
