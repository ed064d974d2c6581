"""HTTP backends (stack/http_backend.py) started as processes, and a helper to switch their mode."""

from __future__ import annotations

import sys
import urllib.request
from dataclasses import dataclass

from .ports import free_port, port_open
from .process import ManagedProcess, Stack, wait_for


@dataclass
class HttpBackend:
    """A started HTTP backend process."""

    name: str
    port: int
    process: ManagedProcess
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/health"

    def set_mode(self, mode: str, delay: float | None = None) -> None:
        """Switch to healthy, slow (with ``delay`` seconds), hang or error."""
        query = f"mode={mode}" + (f"&delay={delay}" if delay is not None else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_control?{query}", timeout=5) as resp:
            resp.read()


def start_http_backend(
    stack: Stack, name: str, port: int | None = None, host: str = "127.0.0.1"
) -> HttpBackend:
    """Start one backend on ``host:port`` (a free port by default) and wait until it accepts connections."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tierwatch_lab.stack.http_backend", "--port", str(port), "--name", name]
    proc = stack.spawn(name, [*argv, "--host", host])
    wait_for(lambda: proc.check_alive() or port_open(port, host), 10, f"{name} on port {port}")
    return HttpBackend(name, port, proc, host)
