"""tierwatch's own processes (the exporter and the recovery service) started like any other server."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable, Sequence
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
    stack: Stack,
    name: str,
    command: str,
    config: Path,
    port: int | None,
    timeout: float,
    extra_args: Sequence[str] = (),
    ready_check: Callable[[TierwatchProcess], bool] | None = None,
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
        *extra_args,
    ]
    proc = stack.spawn(name, argv)
    started = TierwatchProcess(name, port, config, proc)

    def ready() -> bool:
        proc.check_alive()
        if ready_check is not None:  # e.g. over TLS with basic auth
            return ready_check(started)
        with urllib.request.urlopen(f"{started.url}/ready", timeout=2) as response:
            return response.status == 200

    wait_for(ready, timeout, f"{name} ready")
    return started


def start_exporter(
    stack: Stack,
    config: Path,
    port: int | None = None,
    name: str = "exporter",
    extra_args: Sequence[str] = (),
    ready_check: Callable[[TierwatchProcess], bool] | None = None,
) -> TierwatchProcess:
    """``tierwatch serve`` (with ``extra_args``, e.g. ``--web.config.file``); ready after its first probe
    round (asked by ``ready_check`` when plain HTTP to /ready cannot)."""
    return _start(stack, name, "serve", config, port, 30.0, extra_args, ready_check)


def start_recovery(
    stack: Stack,
    config: Path,
    port: int | None = None,
    name: str = "recovery",
    extra_args: Sequence[str] = (),
    ready_check: Callable[[TierwatchProcess], bool] | None = None,
) -> TierwatchProcess:
    """``tierwatch recover``; ready once its inbox is open (``extra_args``, ``ready_check``: as above)."""
    return _start(stack, name, "recover", config, port, 30.0, extra_args, ready_check)
