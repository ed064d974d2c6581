"""A real Alertmanager (Debian's prometheus-alertmanager) on free loopback ports, with its own data dir."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def start_alertmanager(stack: Stack, config_text: str, name: str = "alertmanager") -> Alertmanager:
    """Start Alertmanager with ``config_text`` (no clustering) and wait until it is ready."""
    port = free_port()
    directory = stack.directory(name)
    config = directory / "alertmanager.yml"
    config.write_text(config_text)
    argv = [
        binary(),
        f"--config.file={config}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
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
