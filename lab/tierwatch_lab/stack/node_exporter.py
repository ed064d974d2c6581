"""A real node_exporter (Debian ``prometheus-node-exporter``) on a free loopback port.

Only the collectors the host rules and the hosts dashboard read are on (cpu, meminfo, filesystem,
filefd, loadavg, netdev, diskstats): fewer series, a fast scrape, and no collector that needs systemd;
the textfile collector only when given a directory (the demo's restore-test and Redis snapshot results,
which the batch commands write in its format). The filesystem collector keeps its defaults (the rules
skip tmpfs-like mounts through ``selectors.node_filesystem``). Prometheus scrapes it as job ``node``
(``selectors.node`` of the rules).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for
from .prometheus import ScrapeJob

HOST = "127.0.0.1"
JOB = "node"
BINARIES = ("prometheus-node-exporter", "node_exporter")
COLLECTORS = ("cpu", "meminfo", "filesystem", "filefd", "loadavg", "netdev", "diskstats")


@dataclass
class NodeExporter:
    """A started node_exporter."""

    port: int
    process: ManagedProcess

    @property
    def address(self) -> str:
        """``host:port`` to scrape."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"


def node_exporter_binary() -> Path:
    """The node_exporter binary (Debian names it prometheus-node-exporter)."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise StackError("node_exporter not found; install the Debian package prometheus-node-exporter")


def start_node_exporter(
    stack: Stack,
    name: str = "node-exporter",
    ready_timeout: float = 15.0,
    prefix: Sequence[str] = (),
    textfile_dir: Path | None = None,
) -> NodeExporter:
    """Start node_exporter on a free 127.0.0.1 port; returns once /metrics answers. ``prefix`` runs it
    through another command (e.g. ``unshare`` into a mount namespace of its own, for a test disk);
    ``textfile_dir``: the textfile collector reads the ``*.prom`` files there."""
    port = free_port()
    textfile = (
        ["--collector.textfile", f"--collector.textfile.directory={textfile_dir}"] if textfile_dir else []
    )
    argv = [
        *prefix,
        str(node_exporter_binary()),
        f"--web.listen-address={HOST}:{port}",
        "--collector.disable-defaults",
        *(f"--collector.{collector}" for collector in COLLECTORS),
        *textfile,
        "--log.level=warn",
    ]
    process = stack.spawn(name, argv, cwd=stack.directory(name))
    exporter = NodeExporter(port, process)

    def ready() -> bool:
        process.check_alive()
        try:
            response = httpx.get(exporter.url, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and "node_cpu_seconds_total" in response.text

    try:
        wait_for(ready, ready_timeout, f"node_exporter to answer on port {port}")
    except StackError as exc:
        raise StackError(f"{exc}\n{process.log_tail()}") from None
    return exporter


def node_job(exporter: NodeExporter) -> ScrapeJob:
    """The scrape job of ``exporter`` as the host rules select it (job ``node``)."""
    return ScrapeJob(JOB, [exporter.address])
