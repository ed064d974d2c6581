"""A network namespace plugged into the root namespace by one veth, on a 10.213.X.0/24 chosen like the
VRRP network's: the part stack/netns.py (a watcher cut off) and stack/servernet.py (a server cut
off) share.

    root namespace  veth <tag><hex>h 10.213.X.1/24
    netns <tag>-<hex>: eth0 10.213.X.2/24, lo

Subclasses name their ``TAG`` and stop their own forwarders in ``stop_forwarders``; ``teardown``
removes the veth and the namespace (``leftovers`` tells what would remain).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from .process import Stack, StackError, wait_for
from .vrrp import PREFIX, _free_subnet, _ip, _subnet_raced, existing

NS_IFACE = "eth0"


@dataclass
class VethNet:
    """A namespace ``<TAG>-<suffix>`` reached from the root namespace through veth ``<TAG><suffix>h``."""

    TAG: ClassVar[str] = "twn"

    suffix: str
    subnet: int

    @property
    def namespace(self) -> str:
        return f"{self.TAG}-{self.suffix}"

    @property
    def veth(self) -> str:
        """The root-namespace end (the other end is ``eth0`` in the namespace)."""
        return f"{self.TAG}{self.suffix}h"

    @property
    def host_ip(self) -> str:
        return f"{PREFIX}.{self.subnet}.1"

    @property
    def ns_ip(self) -> str:
        return f"{PREFIX}.{self.subnet}.2"

    def stop_forwarders(self) -> None:
        """Stop what the subclass runs across the veth (nothing here)."""

    def leftovers(self) -> list[str]:
        """The namespace and the veth if they exist now."""
        return existing((self.namespace,), (self.veth,))

    def teardown(self, timeout: float = 10.0) -> None:
        """Stop the forwarders, delete the veth and the namespace; wait until neither is left."""
        self.stop_forwarders()
        _ip("link", "del", self.veth, check=False)
        _ip("netns", "del", self.namespace, check=False)
        wait_for(lambda: not self.leftovers(), timeout, f"namespace {self.namespace} to be removed")


Net = TypeVar("Net", bound=VethNet)


def create_veth_net(stack: Stack, kind: type[Net], attempts: int = 3) -> Net:
    """Create a ``kind`` namespace and its veth, addressed and up (removed when ``stack`` closes)."""
    for _ in range(attempts):
        net = kind(secrets.token_hex(3), _free_subnet())
        stack.on_close(net.teardown)
        _ip("netns", "add", net.namespace)
        _ip("link", "add", net.veth, "type", "veth", "peer", "name", NS_IFACE, "netns", net.namespace)
        _ip("addr", "add", f"{net.host_ip}/24", "dev", net.veth)
        _ip("link", "set", net.veth, "up")
        if _subnet_raced(net.subnet):
            net.teardown()
            continue
        _ip("-n", net.namespace, "addr", "add", f"{net.ns_ip}/24", "dev", NS_IFACE)
        _ip("-n", net.namespace, "link", "set", NS_IFACE, "up")
        _ip("-n", net.namespace, "link", "set", "lo", "up")
        return net
    raise StackError(f"could not find a free {PREFIX}.X.0/24 subnet in {attempts} attempts")
