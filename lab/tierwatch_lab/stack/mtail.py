"""Debian's mtail (3.0.0~rc50) turning log lines into Prometheus counters, on a free loopback port.

It tails the given files (the collector's central.log: stack/rsyslog.py) with the programs of a
directory (the kit's logs/mtail/); Prometheus scrapes it as job ``logs``. The programs are compiled
first (``-compile_only``), so a broken program fails the start instead of leaving mtail running
without it. A file that is rotated (renamed, a new one under the name) is read to its end and then
the new one from its start; a file deleted and created again is found again within the poll interval,
but read from its end (mtail's rule for files it discovers after its start).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for
from .prometheus import ScrapeJob

HOST = "127.0.0.1"
JOB = "logs"


@dataclass
class MtailServer:
    """A started mtail."""

    port: int
    process: ManagedProcess
    logs: tuple[Path, ...]
    progs: Path

    @property
    def address(self) -> str:
        """``host:port`` to scrape (``/metrics``)."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        response = httpx.get(f"{self.url}/metrics", timeout=5.0)
        response.raise_for_status()
        return response.text

    def value(self, metric: str, **labels: str) -> float | None:
        """The sum of the samples named ``metric`` whose labels include ``labels``; None if none."""
        found = [
            sample.value
            for family in text_string_to_metric_families(self.metrics())
            for sample in family.samples
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found) if found else None


def check_programs(progs: Path) -> None:
    """Compile the programs of ``progs`` (``mtail -compile_only``); StackError with mtail's words if
    one does not compile."""
    if not progs.is_dir() or not any(progs.glob("*.mtail")):
        raise StackError(f"no mtail programs (*.mtail) in {progs}")
    # it still opens its HTTP port for a moment: a free one on loopback, not the default *:3903
    argv = ["mtail", "-compile_only", "-logtostderr", "-progs", str(progs)]
    argv += ["-address", HOST, "-port", str(free_port())]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"mtail cannot compile {progs}:\n{(done.stdout + done.stderr)[-3000:]}")


def start_mtail(
    stack: Stack,
    logs: Sequence[Path],
    progs: Path,
    *,
    name: str = "mtail",
    poll_interval: str = "250ms",
    ready_timeout: float = 15.0,
) -> MtailServer:
    """Start mtail on a free 127.0.0.1 port tailing ``logs`` with the programs in ``progs``; returns
    once ``/metrics`` answers. Stopped with the stack."""
    check_programs(progs)
    port = free_port()
    argv = [
        "mtail",
        "-progs", str(progs),
        "-logs", ",".join(str(path) for path in logs),
        "-address", HOST,
        "-port", str(port),
        "-poll_interval", poll_interval,
        "-poll_log_interval", poll_interval,
        "-logtostderr",  # else glog writes files into /tmp
    ]  # fmt: skip
    process = stack.spawn(name, argv, cwd=stack.directory(name))
    server = MtailServer(port, process, tuple(Path(p) for p in logs), progs)

    def ready() -> bool:
        process.check_alive()
        try:
            return httpx.get(f"{server.url}/metrics", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, ready_timeout, f"mtail to answer on port {port}")
    except StackError as exc:
        raise StackError(f"{exc}\n{process.log_tail()}") from None
    return server


def logs_job(mtail: MtailServer) -> ScrapeJob:
    """The scrape job of ``mtail`` (job ``logs``: the series carry their own tier/cluster/target/region)."""
    return ScrapeJob(JOB, [mtail.address])
