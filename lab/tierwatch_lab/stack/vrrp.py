"""Two HAProxy load balancers sharing a virtual IP through keepalived (VRRP), each in its own network
namespace on a private bridge. Needs root, ``ip netns``, keepalived and haproxy (see ``vrrp_missing``);
without them the demo falls back to the TCP forwarder of stack/tcp_forwarder.py.

Layout (X chosen so that 10.213.X.0/24 is not routed on this machine yet)::

    root namespace   bridge tw<hex> 10.213.X.1/24   <- app servers listen here (or on 0.0.0.0)
        | veth tw<hex>a1                 | veth tw<hex>a2
    netns tw-<hex>-lb1: eth0 .11     netns tw-<hex>-lb2: eth0 .12
      haproxy 0.0.0.0:port             haproxy 0.0.0.0:port
      keepalived priority 150          keepalived priority 100      (VRRP unicast .11 <-> .12)
                     VIP 10.213.X.100 on the eth0 of the MASTER

Each keepalived tracks its HAProxy with a script asking HAProxy's monitor-uri inside the namespace, so
a dead HAProxy puts its keepalived into FAULT and the VIP moves to the other LB. HAProxy stats sockets
are files in the stack directory, reachable from the root namespace. Everything created here is
removed when the stack closes (``VrrpNetwork.leftovers`` tells what would remain).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .haproxy import HAProxy, start_haproxy
from .ports import port_open
from .process import ManagedProcess, Stack, StackError, wait_for
from .rsyslog import SyslogTarget

PREFIX = "10.213"
NS_IFACE = "eth0"
PRIORITIES = (150, 100)


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise StackError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def existing(namespaces: Sequence[str], links: Sequence[str]) -> list[str]:
    """Those of ``namespaces`` and of ``links`` that exist now (what a teardown would leave)."""
    present = set(_ip("netns", "list", check=False).split())
    names = set(re.findall(r"^\d+: ([^:@]+)", _ip("-o", "link", "show", check=False), re.MULTILINE))
    return [n for n in namespaces if n in present] + [link for link in links if link in names]


def vrrp_missing() -> list[str]:
    """What keeps ``start_vrrp_pair`` from running here (empty when it can run)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and VRRP need it; run as root)")
    for tool, package in (("ip", "iproute2"), ("keepalived", "keepalived"), ("haproxy", "haproxy")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if shutil.which("bash") is None:
        missing.append("bash (keepalived's HAProxy check script)")
    if not missing:
        probe = f"tw-probe-{secrets.token_hex(3)}"
        try:
            _ip("netns", "add", probe)
            _ip("netns", "exec", probe, "ip", "link", "set", "lo", "up")
        except (StackError, OSError, subprocess.SubprocessError) as exc:
            missing.append(f"working network namespaces ({exc})")
        finally:
            _ip("netns", "del", probe, check=False)
    return missing


def vrrp_available() -> bool:
    """True when running as root with working ``ip netns``, keepalived and haproxy."""
    return not vrrp_missing()


def _free_subnet() -> int:
    """An X for 10.213.X.0/24 that no route of this machine covers yet."""
    routes = _ip("-4", "route", "show", "table", "all")
    used = {int(m) for m in re.findall(rf"\b{re.escape(PREFIX)}\.(\d+)\.", routes)}
    if re.search(rf"\b{re.escape(PREFIX)}\.0\.0/(1[0-6])\b", routes):
        raise StackError(f"{PREFIX}.0.0/16 is routed on this machine already; no subnet for the VRRP demo")
    candidates = [x for x in range(1, 255) if x not in used]
    if not candidates:
        raise StackError(f"every {PREFIX}.X.0/24 is in use")
    return random.choice(candidates)


def _subnet_raced(subnet: int) -> bool:
    """True when another network took ``subnet`` too (picked at the same moment as the caller's)."""
    owners = _ip("-4", "route", "show", f"{PREFIX}.{subnet}.0/24", "table", "all").strip()
    return len(owners.splitlines()) > 1


@dataclass
class VrrpNetwork:
    """A bridge in the root namespace and two namespaces (one per LB) plugged into it by veths."""

    suffix: str
    subnet: int

    @property
    def bridge(self) -> str:
        return f"tw{self.suffix}"

    @property
    def namespaces(self) -> tuple[str, str]:
        return (f"tw-{self.suffix}-lb1", f"tw-{self.suffix}-lb2")

    @property
    def veths(self) -> tuple[str, str]:
        """The root-namespace ends (the other ends are ``eth0`` in each namespace)."""
        return (f"tw{self.suffix}a1", f"tw{self.suffix}a2")

    @property
    def host_ip(self) -> str:
        """The bridge's address: where the LBs reach the app servers."""
        return f"{PREFIX}.{self.subnet}.1"

    @property
    def vip(self) -> str:
        return f"{PREFIX}.{self.subnet}.100"

    def lb_ip(self, index: int) -> str:
        """The address of LB ``index`` (1 or 2) in its namespace."""
        return f"{PREFIX}.{self.subnet}.{10 + index}"

    @property
    def virtual_router_id(self) -> int:
        return int(self.suffix, 16) % 255 + 1

    def leftovers(self) -> list[str]:
        """Namespaces and links of this network that exist now."""
        return existing(self.namespaces, (self.bridge, *self.veths))

    def teardown(self, timeout: float = 10.0) -> None:
        """Delete the veths, the namespaces and the bridge; wait until none is left."""
        for veth in self.veths:  # deleting one end removes both, even while the namespace lingers
            _ip("link", "del", veth, check=False)
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)
        wait_for(lambda: not self.leftovers(), timeout, f"network {self.bridge} to be removed")


def create_vrrp_network(stack: Stack, attempts: int = 3) -> VrrpNetwork:
    """Create the bridge and the two LB namespaces (removed when ``stack`` closes)."""
    for _ in range(attempts):
        net = VrrpNetwork(secrets.token_hex(3), _free_subnet())
        stack.on_close(net.teardown)
        _ip("link", "add", net.bridge, "type", "bridge")
        _ip("addr", "add", f"{net.host_ip}/24", "dev", net.bridge)
        _ip("link", "set", net.bridge, "up")
        if _subnet_raced(net.subnet):  # then start over elsewhere
            net.teardown()
            continue
        for index, (ns, veth) in enumerate(zip(net.namespaces, net.veths, strict=True), start=1):
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", NS_IFACE, "netns", ns)
            _ip("link", "set", veth, "master", net.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{net.lb_ip(index)}/24", "dev", NS_IFACE)
            _ip("-n", ns, "link", "set", NS_IFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return net
    raise StackError(f"could not find a free {PREFIX}.X.0/24 subnet in {attempts} attempts")


CHECK_SCRIPT = """#!/bin/bash
# keepalived's track script: exit 0 while this namespace's HAProxy answers its monitor-uri
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1
printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3
IFS= read -r -t 1 status <&3 || exit 1
[[ $status == *" 200 "* ]]
"""


def render_keepalived(net: VrrpNetwork, index: int, check_script: Path) -> str:
    """The keepalived config of LB ``index``: one unicast VRRP instance holding the VIP, tracking HAProxy."""
    me, peer = net.lb_ip(index), net.lb_ip(3 - index)
    return f"""global_defs {{
  router_id {net.namespaces[index - 1]}
  script_user root
  enable_script_security
  vrrp_garp_master_delay 1
  vrrp_garp_master_repeat 3
}}

vrrp_script chk_haproxy {{
  script "{check_script}"
  interval 1
  timeout 1
  fall 1
  rise 2
}}

vrrp_instance tw_{net.suffix} {{
  state {"MASTER" if index == 1 else "BACKUP"}
  interface {NS_IFACE}
  virtual_router_id {net.virtual_router_id}
  priority {PRIORITIES[index - 1]}
  advert_int 1
  unicast_src_ip {me}
  unicast_peer {{
    {peer}
  }}
  virtual_ipaddress {{
    {net.vip}/24 dev {NS_IFACE}
  }}
  track_script {{
    chk_haproxy
  }}
}}
"""


@dataclass
class VrrpPair:
    """Two HAProxy LBs (lb-1 priority 150, lb-2 priority 100) sharing ``vip`` through keepalived."""

    network: VrrpNetwork
    port: int
    lbs: list[HAProxy]
    keepaliveds: list[ManagedProcess] = field(default_factory=list)

    @property
    def vip(self) -> str:
        return self.network.vip

    @property
    def vip_url(self) -> str:
        """The VIP's health URL (answered by whichever HAProxy holds the VIP)."""
        return f"http://{self.network.vip}:{self.port}/health"

    def holders(self) -> list[str]:
        """Names of the LBs whose namespace holds the VIP now (two would be a split brain)."""
        return [
            lb.name
            for lb, ns in zip(self.lbs, self.network.namespaces, strict=True)
            if f"inet {self.network.vip}/"
            in _ip("-n", ns, "-4", "addr", "show", "dev", NS_IFACE, check=False)
        ]

    def active(self) -> str | None:
        """The LB holding the VIP (from ``ip -n NS addr``), or None while no LB holds it."""
        holders = self.holders()
        return holders[0] if len(holders) == 1 else None


def start_vrrp_pair(
    stack: Stack,
    servers: Sequence[tuple[str, int]],
    port: int = 8080,
    network: VrrpNetwork | None = None,
    check_interval_ms: int = 1000,
    ready_timeout: float = 20.0,
    logs: Mapping[str, SyslogTarget] | None = None,
) -> VrrpPair:
    """Start lb-1 and lb-2 (HAProxy + keepalived each, in their namespaces) and wait until lb-1 holds
    the VIP and the VIP answers HTTP.

    ``servers`` are (name, port) of app servers listening on ``network.host_ip`` (create the network
    first with ``create_vrrp_network`` and start the apps on its ``host_ip``) or on 0.0.0.0; without
    ``network`` a new one is created. HAProxy binds 0.0.0.0:``port`` inside each namespace. ``logs``:
    where each LB (by name) sends its request log (a collector's unix socket: it is a file, so it is
    reachable from the namespace).
    """
    missing = vrrp_missing()
    if missing:
        raise StackError("VRRP pair needs: " + "; ".join(missing))
    net = network or create_vrrp_network(stack)
    pair = VrrpPair(net, port, [])
    for index, ns in enumerate(net.namespaces, start=1):
        name = f"lb-{index}"
        pair.lbs.append(
            start_haproxy(
                stack,
                name,
                servers,
                port,
                check_interval_ms,
                bind="0.0.0.0",
                server_host=net.host_ip,
                host=net.lb_ip(index),
                prefix=["ip", "netns", "exec", ns],
                log=(logs or {}).get(name),
            )
        )
        directory = stack.directory("keepalived", name)
        script = directory / "check_haproxy.sh"
        script.write_text(CHECK_SCRIPT.format(port=port))
        script.chmod(0o700)
        config = directory / "keepalived.conf"
        config.write_text(render_keepalived(net, index, script))
        argv = ["ip", "netns", "exec", ns, "keepalived", "-n", "-l", "-D", "-P", "-G", "-f", str(config)]
        argv += ["-p", str(directory / "keepalived.pid"), "-r", str(directory / "vrrp.pid")]
        pair.keepaliveds.append(stack.spawn(f"keepalived-{name}", argv))

    def ready() -> bool:
        for proc in (*pair.keepaliveds, *(lb.process for lb in pair.lbs)):
            proc.check_alive()
        return pair.active() == "lb-1" and port_open(port, net.vip)

    try:
        wait_for(ready, ready_timeout, f"lb-1 to hold the VIP {net.vip}")
    except StackError as exc:
        tails = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in pair.keepaliveds)
        raise StackError(f"{exc}\n{tails}") from None
    return pair
