"""Small helpers shared by tests (imported as ``from helpers import ...``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tierwatch_lab.stack import ManagedProcess

TIERWATCH = [sys.executable, "-m", "tierwatch"]


def run_cli(*args: str, timeout: float = 60, **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run ``tierwatch ARGS`` with this interpreter to its end, its output captured as text."""
    return subprocess.run([*TIERWATCH, *args], capture_output=True, text=True, timeout=timeout, **popen)


class CliProcess:
    """``tierwatch ARGS`` (the demo, a service) running in a session of its own, every line it prints
    collected. ``stop`` is Ctrl-C (SIGINT); if it has not exited after the grace period, the whole group
    is killed (its servers die with it: PR_SET_PDEATHSIG), so a failing test leaves nothing running."""

    def __init__(self, *args: str, before_exec: Callable[[], None] | None = None, **popen: Any):
        self.proc = subprocess.Popen(
            [*TIERWATCH, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=before_exec,
            **popen,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def printed(self, pattern: str) -> str | None:
        """Group 1 of the first printed line matching ``pattern``; fails at once if the process ended."""
        assert self.proc.poll() is None, self.output
        return next((m.group(1) for line in list(self.lines) if (m := re.match(pattern, line))), None)

    def stop(self, grace: float = 60) -> int:
        """Ctrl-C, wait up to ``grace`` seconds, else SIGKILL to the group and raise TimeoutExpired."""
        try:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise
        finally:
            self._reader.join(5)


def processes_mentioning(text: str) -> list[int]:
    """The pids whose command line contains ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(pid))
    return found


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
