"""A watcher in a network namespace of its own, so a drill can cut it off from some servers for real.

Layout (X chosen like the VRRP network's: 10.213.X.0/24 not routed on this machine yet)::

    root namespace  veth twv<hex>h 10.213.X.1/24 (+ 10.213.X.10, .11, ...: one address per server)
        |   a forwarder per server: 10.213.X.(10+i):P -> 127.0.0.1:P (the servers listen on loopback)
    netns twv-<hex>: eth0 10.213.X.2/24
        tierwatch serve --listen 10.213.X.2:port (scraped by Prometheus through the veth)

``cut(ports)`` adds a blackhole route inside the namespace for the addresses of those servers: the
watcher's packets to them are dropped (connects time out, open connections stall) while it still
reaches every other server and Prometheus still scrapes it. ``heal(ports)`` removes the routes.
Everything created here is removed when the stack closes (``leftovers`` tells what would remain).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for
from .tcp_forwarder import pipe
from .veth import VethNet, create_veth_net
from .vrrp import PREFIX, _ip


@dataclass
class WatcherNet(VethNet):
    """A namespace plugged into the root namespace by one veth, and the forwarders it reaches servers by."""

    TAG: ClassVar[str] = "twv"

    backends: dict[int, str] = field(default_factory=dict)  # server port -> its address on the veth
    cut_ports: set[int] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def url_for(self, url: str, port: int) -> str:
        """``url`` (a server on 127.0.0.1:``port``) as the watcher in the namespace reaches it."""
        return url.replace(f"127.0.0.1:{port}", f"{self.backends[port]}:{port}")

    def forward(self, ports: list[int]) -> None:
        """Start a forwarder per server port (on an address of its own on the veth)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        for port in ports:
            address = f"{PREFIX}.{self.subnet}.{10 + len(self.backends)}"
            _ip("addr", "add", f"{address}/32", "dev", self.veth)
            self.backends[port] = address
            future = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(_forwarder(port), address, port), self._loop
            )
            future.result(10)

    def cut(self, ports: list[int]) -> None:
        """Drop the namespace's traffic to these servers (a blackhole route per server address)."""
        for port in ports:
            _ip("-n", self.namespace, "route", "add", "blackhole", f"{self.backends[port]}/32")
            self.cut_ports.add(port)

    def heal(self, ports: list[int] | None = None) -> None:
        """Remove the blackhole routes (of ``ports``, or all)."""
        for port in list(self.cut_ports if ports is None else ports):
            _ip("-n", self.namespace, "route", "del", "blackhole", f"{self.backends[port]}/32", check=False)
            self.cut_ports.discard(port)

    def stop_forwarders(self) -> None:
        """Stop the forwarders' loop (bounded)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)


def _forwarder(backend: int):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", backend), 2)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return handle


def create_watcher_net(stack: Stack, attempts: int = 3) -> WatcherNet:
    """Create the namespace and its veth (removed when ``stack`` closes)."""
    return create_veth_net(stack, WatcherNet, attempts)


@dataclass
class NetnsExporter:
    """``tierwatch serve`` running inside a WatcherNet's namespace."""

    name: str
    net: WatcherNet
    port: int
    config: Path
    process: ManagedProcess

    @property
    def address(self) -> str:
        return f"{self.net.ns_ip}:{self.port}"


def start_netns_exporter(stack: Stack, net: WatcherNet, config: Path, name: str) -> NetnsExporter:
    """Start an exporter in ``net``'s namespace listening on its address; ready after its first probes."""
    port = free_port()
    argv = ["ip", "netns", "exec", net.namespace, sys.executable, "-m", "tierwatch", "serve"]
    argv += ["--config", str(config), "--listen", f"{net.ns_ip}:{port}"]
    started = NetnsExporter(name, net, port, config, stack.spawn(name, argv))

    def ready() -> bool:
        started.process.check_alive()
        with urllib.request.urlopen(f"http://{started.address}/ready", timeout=2) as response:
            return bool(response.status == 200)

    wait_for(ready, 30, f"{name} ready in namespace {net.namespace}")
    return started


def start_data_watchers(
    stack: Stack,
    clusters: list[dict[str, Any]],
    ports: Mapping[str, int],
    count: int,
    sections: Mapping[str, Any],
) -> list[NetnsExporter]:
    """``count`` exporters, each in a WatcherNet of its own, watching the Redis and PostgreSQL
    clusters of ``clusters`` (``ports``: each target's port on 127.0.0.1) through its forwarders;
    ``sections``: their ``monitor`` and ``circuit_breaker`` config (ChainTiming.exporter_sections)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise StackError("watchers in network namespaces need root and ip (apt-get install iproute2)")
    watchers = []
    for index in range(1, count + 1):
        net = create_watcher_net(stack)
        net.forward(sorted(set(ports.values())))
        data = []
        for cluster in clusters:
            if cluster["tier"] not in ("redis", "postgres"):
                continue
            copy = {key: value for key, value in cluster.items() if key != "sentinel"}
            copy["targets"] = [
                {**t, "url": net.url_for(t["url"], ports[t["name"]])} for t in cluster["targets"]
            ]
            data.append(copy)
        config = stack.path("chain", f"watcher-{index}.yml")
        body = {**sections, "log": {"format": "json"}, "clusters": data}
        config.write_text(yaml.safe_dump(body, sort_keys=False))
        watchers.append(start_netns_exporter(stack, net, config, f"exporter-watcher-{index}"))
    return watchers
