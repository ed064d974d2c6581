"""tierwatch's own processes (the exporter and the recovery service) started like any other server."""

from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .process import ManagedProcess, Stack, wait_for


@dataclass
class TierwatchProcess:
    """A running ``tierwatch serve`` or ``tierwatch recover``."""

    name: str
    port: int
    config: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _start(
    stack: Stack, name: str, command: str, config: Path, port: int | None, timeout: float
) -> TierwatchProcess:
    port = port or free_port()
    argv = [
        sys.executable,
        "-m",
        "tierwatch",
        command,
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = stack.spawn(name, argv)
    started = TierwatchProcess(name, port, config, proc)

    def ready() -> bool:
        proc.check_alive()
        with urllib.request.urlopen(f"{started.url}/ready", timeout=2) as response:
            return response.status == 200

    wait_for(ready, timeout, f"{name} ready")
    return started


def start_exporter(
    stack: Stack, config: Path, port: int | None = None, name: str = "exporter"
) -> TierwatchProcess:
    """``tierwatch serve``; ready after its first probe round."""
    return _start(stack, name, "serve", config, port, 30.0)


def start_recovery(
    stack: Stack, config: Path, port: int | None = None, name: str = "recovery"
) -> TierwatchProcess:
    """``tierwatch recover``; ready once its inbox is open."""
    return _start(stack, name, "recover", config, port, 30.0)
