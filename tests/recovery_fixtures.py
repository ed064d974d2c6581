"""Helpers for recovery-service tests: a real ``tierwatch recover`` process, webhook payloads, and a
restart command that records each run and brings a backend back."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tierwatch.recovery.webhook import fingerprint_of
from tierwatch_lab.stack import Stack, free_port, wait_for

TOKEN = "webhook-t0ken-Very-Secret"

# Writes one line to the marker file, waits, then starts an HTTP backend on the port, detached.
RESTART_SCRIPT = """
import subprocess, sys, time
marker, port, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(marker, "a") as handle:
    handle.write("restart\\n")
time.sleep(delay)
backend = "tierwatch_lab.stack.http_backend"
proc = subprocess.Popen([sys.executable, "-m", backend, "--port", port, "--name", "r"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
with open(marker + ".pids", "a") as handle:
    handle.write(f"{proc.pid}\\n")
"""


# the labels of an AppInstanceDown alert for es-1 of cluster web, as the rules set them
RESTART_LABELS = {
    "tier": "app",
    "cluster": "web",
    "target": "es-1",
    "region": "primary",
    "action": "restart_instance",
    "severity": "critical",
}


def alert(
    name: str,
    labels: dict[str, str],
    status: str = "firing",
    starts_at: str = "2026-11-26T21:00:00Z",
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """One alert as Alertmanager puts it in a webhook (its fingerprint computed from the labels as
    Alertmanager does, unless a test forges one)."""
    labels = {"alertname": name, **labels}
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": name},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-26T21:05:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint_of(labels) if fingerprint is None else fingerprint,
    }


def payload(*alerts: dict[str, Any], receiver: str = "recovery") -> dict[str, Any]:
    """A version 4 notification."""
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": "{}:{alertname}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": list(alerts),
    }


@dataclass
class RecoveryProcess:
    """A running ``tierwatch recover`` and what a test needs to talk to it."""

    url: str
    config: Path
    state_dir: Path
    proc: subprocess.Popen[str]
    log: Path

    def post(self, body: Any, token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("timeout", 10)
        if isinstance(body, (bytes, str)):
            return httpx.post(self.url + "/webhook", content=body, headers=headers, **kwargs)
        return httpx.post(self.url + "/webhook", json=body, headers=headers, **kwargs)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.audit() if entry["event"] == name]

    def wait_outcome(self, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        return wait_for(lambda: (o := self.events("outcome")) and len(o) >= count and o, timeout, "outcome")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def start_recovery(
    stack: Stack,
    clusters: list[dict[str, Any]],
    recovery: dict[str, Any],
    state_dir: Path | None = None,
    name: str = "recover",
    nofile: int | None = None,
) -> RecoveryProcess:
    """Write a config with a ``recovery:`` section (bearer token auth) and start the service
    (with its open-file limit lowered to ``nofile`` when given)."""
    token_file = stack.path("secrets", "token")
    token_file.write_text(TOKEN + "\n")
    state_dir = state_dir or stack.directory("recovery-state")
    settings = {"state_dir": str(state_dir), "auth": {"bearer_token_file": str(token_file)}, **recovery}
    config = stack.path(f"{name}.yml")
    config.write_text(yaml.safe_dump({"clusters": clusters, "recovery": settings}, sort_keys=False))
    return launch(stack, config, state_dir, name, nofile)


def _limit_open_files(nofile: int | None) -> Any:
    if nofile is None:
        return None

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return limit


def launch(
    stack: Stack, config: Path, state_dir: Path, name: str = "recover", nofile: int | None = None
) -> RecoveryProcess:
    """Start (or restart) the service on a config; waits until /ready."""
    port = free_port()
    log = stack.path("logs", f"{name}-{port}.log")
    handle = open(log, "w")  # noqa: SIM115 - the process owns it until it exits
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierwatch",
            "recover",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_limit_open_files(nofile),
    )
    stack.on_close(lambda: proc.poll() is None and proc.kill())
    service = RecoveryProcess(f"http://127.0.0.1:{port}", config, state_dir, proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"recover exited {proc.returncode}: {log.read_text()}")
        return httpx.get(service.url + "/ready", timeout=2).status_code == 200

    wait_for(ready, 20, "recovery service ready")
    return service


def restart_command(marker: Path, port: int, delay: float = 0.0) -> list[str]:
    """An argument list that records a restart in ``marker`` and brings a backend up on ``port``."""
    script = marker.with_suffix(".py")
    script.write_text(RESTART_SCRIPT)
    return [sys.executable, str(script), str(marker), str(port), str(delay)]


def kill_started_backends(marker: Path) -> None:
    """Stop the backends the restart command started."""
    import os
    import signal

    pids = marker.with_name(marker.name + ".pids")
    if pids.exists():
        for line in pids.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except ProcessLookupError:
                pass


def app_cluster(targets: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An app cluster of (name, region, url)."""
    return {
        "name": "web",
        "tier": "app",
        "targets": [{"name": n, "region": r, "url": u} for n, r, u in targets],
    }
