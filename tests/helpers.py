"""Small helpers shared by tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import os
import signal

from tierwatch_lab.stack import ManagedProcess


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of ``name`` in exposition ``text`` carrying all ``labels``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def connections_to(ports: set[int]) -> int:
    """How many TCP connections this process holds open to 127.0.0.1 on any of ``ports`` (by socket
    inode, from /proc), unaffected by unrelated descriptors other tests may leave to the GC."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[3] == "01" and remote_port in ports and fields[9] in inodes:  # 01 = ESTABLISHED
                count += 1
    return count


def terminate(process: ManagedProcess, timeout: float = 20) -> tuple[int, str]:
    """SIGTERM a started process, wait for it, and return its exit code and everything it logged."""
    assert process.popen is not None
    process.popen.send_signal(signal.SIGTERM)
    code = process.popen.wait(timeout)
    return code, process.log_path.read_text(errors="replace")
