"""A server in a network namespace of its own, so a drill can cut it off, with some of its clients,
from everything else: the primary-partition drill (lab/drills_partition.py).

Layout (X chosen like the VRRP network's: 10.213.X.0/24 not routed on this machine yet)::

    root namespace  veth tws<hex>h 10.213.X.1/24
        forwarders 127.0.0.1:P -> 10.213.X.2:P     (P: a server in the namespace, ``expose``)
        forwarders 10.213.X.1:Q -> 127.0.0.1:Q     (Q: a server in the root namespace, ``reach``)
    netns tws-<hex>: eth0 10.213.X.2/24, lo
        the server, listening on 127.0.0.1:P and 10.213.X.2:P
        forwarders 127.0.0.1:Q -> 10.213.X.1:Q

So every address in every config stays 127.0.0.1:<port>, on both sides: replicas, load balancers,
exporters and the recovery service reach the server at 127.0.0.1:P as before, and the server (after
a REPLICAOF or a pg_rewind) reaches any other at 127.0.0.1:Q. Every byte between the two sides
crosses the veth. Clients on the server's side run in threads that ``enter`` the namespace.

``cut()`` replaces the neighbour entry of the other end, on both ends, by a permanent entry with a
MAC nobody has: frames still leave, the other end drops them (not addressed to it). Silent drops
both ways: connects hang, open connections stall, nobody gets a reset or an error. ``heal()``
deletes those entries (ARP resolves the real ones again). ``teardown`` stops the forwarders and
removes the veth and the namespace (``leftovers`` tells what would remain).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .ports import free_port
from .process import Stack, StackError
from .tcp_forwarder import pipe
from .veth import NS_IFACE, VethNet, create_veth_net
from .vrrp import PREFIX, _ip

NOBODY_MAC = "02:74:77:00:00:01"  # locally administered: no interface of a stack has it
CONNECT_TIMEOUT = 30.0  # a forwarder's connect across a cut hangs (like the client's would) this long
_CLONE_NEWNET = 0x40000000


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it) into the network namespace ``namespace``: sockets it creates
    from now on live there (threads it starts inherit it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise StackError(f"setns into {namespace} failed: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class _LoopThread:
    """An asyncio loop in a thread of its own, in ``namespace`` when given; tracks what it opened."""

    def __init__(self, namespace: str | None):
        self.loop = asyncio.new_event_loop()
        self.servers: list[asyncio.Server] = []
        self.writers: set[asyncio.StreamWriter] = set()
        failed: list[BaseException] = []
        ready = threading.Event()

        def run() -> None:
            try:
                if namespace is not None:
                    enter_namespace(namespace)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                failed.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name=f"servernet-{namespace or 'root'}")
        self.thread.start()
        ready.wait(10)
        if failed:
            raise StackError(f"forwarder thread: {failed[0]}")

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def listen(self, host: str, port: int, to: tuple[str, int]) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.add(writer)
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*to), CONNECT_TIMEOUT)
            except (OSError, TimeoutError):
                writer.close()
                self.writers.discard(writer)
                return
            self.writers.add(up_writer)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            self.writers.difference_update((writer, up_writer))

        self.servers.append(await asyncio.start_server(handle, host, port, reuse_address=True))

    async def _close(self) -> None:
        for server in self.servers:
            server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self.call(self._close(), 5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class ServerNet(VethNet):
    """A namespace for servers (and their isolated clients) plugged into the root namespace by one veth."""

    TAG: ClassVar[str] = "tws"

    exposed: list[int] = field(default_factory=list)  # ports of servers in the namespace
    reached: list[int] = field(default_factory=list)  # root ports the namespace reaches
    is_cut: bool = False
    _root: _LoopThread | None = field(default=None, repr=False)
    _inside: _LoopThread | None = field(default=None, repr=False)

    @property
    def network(self) -> str:
        """The veth's network (CIDR): where a server in the namespace sees root clients come from."""
        return f"{PREFIX}.{self.subnet}.0/24"

    @property
    def listen(self) -> tuple[str, str]:
        """The addresses a server in the namespace listens on: loopback (its isolated clients) and
        its veth address (the root forwarder)."""
        return ("127.0.0.1", self.ns_ip)

    @property
    def launcher(self) -> list[str]:
        """The argv prefix that runs a command in the namespace (``ip netns exec`` execs it: same pid,
        so signals reach the server itself)."""
        return ["ip", "netns", "exec", self.namespace]

    def enter(self) -> None:
        """Move the calling thread into the namespace (see ``enter_namespace``)."""
        enter_namespace(self.namespace)

    def _loops(self) -> tuple[_LoopThread, _LoopThread]:
        if self._root is None or self._inside is None:
            self._root, self._inside = _LoopThread(None), _LoopThread(self.namespace)
        return self._root, self._inside

    def expose(self, port: int | None = None) -> int:
        """Root clients reach the server on the namespace's ``port`` (default: a free one) at
        127.0.0.1:``port``; returns the port."""
        port = port or free_port()
        root, _ = self._loops()
        root.call(root.listen("127.0.0.1", port, (self.ns_ip, port)))
        self.exposed.append(port)
        return port

    def reach(self, ports: Sequence[int]) -> None:
        """The namespace reaches the root namespace's 127.0.0.1:``port`` at its own 127.0.0.1:``port``."""
        root, inside = self._loops()
        for port in ports:
            if port in self.reached or port in self.exposed:
                continue
            root.call(root.listen(self.host_ip, port, ("127.0.0.1", port)))
            inside.call(inside.listen("127.0.0.1", port, (self.host_ip, port)))
            self.reached.append(port)

    def cut(self) -> None:
        """Drop every frame between the two ends, both ways, silently."""
        _ip("neigh", "replace", self.ns_ip, "lladdr", NOBODY_MAC, "dev", self.veth, "nud", "permanent")
        _ip("-n", self.namespace, "neigh", "replace", self.host_ip, "lladdr", NOBODY_MAC, "dev", NS_IFACE,
            "nud", "permanent")  # fmt: skip
        self.is_cut = True

    def heal(self) -> None:
        """Undo ``cut`` (the real neighbours are resolved again at the next frame)."""
        _ip("neigh", "del", self.ns_ip, "dev", self.veth, check=False)
        _ip("-n", self.namespace, "neigh", "del", self.host_ip, "dev", NS_IFACE, check=False)
        self.is_cut = False

    def stop_forwarders(self) -> None:
        """Stop both forwarder loops (the one in the namespace first)."""
        for loop in (self._inside, self._root):
            if loop is not None:
                loop.stop()


def create_server_net(stack: Stack, attempts: int = 3) -> ServerNet:
    """Create the namespace and its veth (removed when ``stack`` closes, after its processes)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise StackError("servers in network namespaces need root and ip (apt-get install iproute2)")
    return create_veth_net(stack, ServerNet, attempts)
