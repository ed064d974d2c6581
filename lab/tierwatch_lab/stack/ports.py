"""Free TCP ports on 127.0.0.1."""

from __future__ import annotations

import os
import socket

_handed_out: set[int] = set()
# a directory shared by the processes of one test run (scripts/test sets it for the pytest workers):
# a port handed out by one process is never handed out by another
REGISTRY_ENV = "TIERWATCH_PORT_REGISTRY"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before by this process (nor by
    another process sharing the ``TIERWATCH_PORT_REGISTRY`` directory)."""
    registry = os.environ.get(REGISTRY_ENV)
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port in _handed_out:
            continue
        _handed_out.add(port)
        if registry and not _claim(registry, port):
            continue
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _claim(registry: str, port: int) -> bool:
    """Record ``port`` in the shared registry; False if another process already has it."""
    try:
        os.close(os.open(os.path.join(registry, str(port)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:  # the registry is gone or unwritable: fall back to this process's own record
        return True
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
