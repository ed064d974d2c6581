"""The demo's service discovery: a Knot DNS server with a zone for the stack, the ``service_discovery``
section that makes the recovery service move its records after a failover (and the exporter check
them), and a client-side resolver for the drills' writers that connect by name.

Every server of the demo is on 127.0.0.1, so the records that tell servers apart are SRV records:
``primary.cache-main`` and ``primary.main-db`` name the Redis master and the PostgreSQL primary
(``0 0 <port> node.tierwatch.test.``), ``app`` the active region's first app server (the demo has one
LB pair for both regions; a real deployment would name each region's entry point). The TTL is
``TTL`` seconds: low, so that clients follow a failover quickly (docs/operations.md, "Service
discovery").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from .stack import Stack
from .stack.knot import KnotServer, start_knot

ZONE = "tierwatch.test."
NODE = f"node.{ZONE}"
TTL = 2


def srv(port: int) -> str:
    """The SRV data of a demo server (everything listens on 127.0.0.1, named ``node``)."""
    return f"0 0 {port} {NODE}"


@dataclass
class DemoDns:
    """The zone's server and the records the kit owns (relative name → cluster, member → value)."""

    knot: KnotServer
    records: dict[str, tuple[str, dict[str, str]]]

    def section(self) -> dict[str, Any]:
        """The config's ``service_discovery:`` section (both the exporter's and recovery's)."""
        return {
            "server": self.knot.server,
            "zone": ZONE,
            "key": {
                "name": self.knot.key_name,
                "algorithm": self.knot.key_algorithm,
                "secret_file": str(self.knot.key_file),
            },
            "ttl": TTL,
            "records": [
                {"name": name, "cluster": cluster, "type": "SRV", "values": values}
                for name, (cluster, values) in self.records.items()
            ],
        }

    def name_of(self, cluster: str) -> str:
        """The absolute name of ``cluster``'s record."""
        return next(f"{name}.{ZONE}" for name, (owner, _) in self.records.items() if owner == cluster)

    def resolver(self, cluster: str) -> SrvPort:
        """A client-side resolver of ``cluster``'s record (the port of the server it names)."""
        return SrvPort(self.knot.address(), self.name_of(cluster))


def start_dns(
    stack: Stack,
    redis: Mapping[str, int],
    pg: Mapping[str, int],
    apps: Mapping[str, tuple[str, int]],
    primaries: Mapping[str, str],
) -> DemoDns:
    """Knot with the zone: ``redis`` and ``pg`` map server names to ports, ``apps`` app servers to
    (region, port); ``primaries`` names the current Redis master (``redis``), PostgreSQL primary
    (``pg``) and active region (``app``)."""
    regions: dict[str, str] = {}
    for _name, (region, port) in apps.items():
        regions.setdefault(region, srv(port))  # each region's first app server stands for it
    records = {
        "primary.cache-main": ("cache-main", {name: srv(port) for name, port in redis.items()}),
        "primary.main-db": ("main-db", {name: srv(port) for name, port in pg.items()}),
        "app": ("web", regions),
    }
    initial = {
        "primary.cache-main": srv(redis[primaries["redis"]]),
        "primary.main-db": srv(pg[primaries["pg"]]),
        "app": regions[primaries["app"]],
    }
    lines = [f"{name} {TTL} IN SRV {value}" for name, value in initial.items()]
    knot = start_knot(stack, "dns", ZONE, lines, TTL)
    return DemoDns(knot, records)


@dataclass
class SrvPort:
    """The port an SRV record names, as a client's stub resolver would give it: looked up again only
    once the answer's TTL has passed (a failed lookup is not cached). Thread-safe."""

    server: tuple[str, int]
    name: str
    timeout: float = 1.0
    _cached: tuple[int, float] | None = field(default=None, repr=False)  # (port, expiry on time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    lookups: int = 0

    def __call__(self) -> int | None:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now < self._cached[1]:
                return self._cached[0]
            self.lookups += 1
            query = dns.message.make_query(self.name, dns.rdatatype.SRV)
            try:
                answer = dns.query.udp(query, self.server[0], port=self.server[1], timeout=self.timeout)
            except (dns.exception.DNSException, OSError):
                return None
            for rrset in answer.answer:
                if rrset.rdtype == dns.rdatatype.SRV:
                    port = int(next(iter(rrset)).port)
                    self._cached = (port, now + rrset.ttl)
                    return port
            return None
