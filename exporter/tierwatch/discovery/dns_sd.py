"""DNS discovery: SRV records (each gives a host and a port) or A/AAAA records (addresses, with the
entry's ``port``), looked up every ``refresh_interval`` through the system's resolver or the entry's
``nameservers``.

As in Prometheus, a name that does not exist (NXDOMAIN) or has no record of the type gives no targets
(they are dropped), while a lookup that fails (timeout, SERVFAIL, refused) keeps the name's previous
targets. An SRV target is kept as a host name (the URL names it, so TLS checks it), resolved when the
target is probed; A/AAAA give addresses. dnspython is imported only when a config uses dns_sd.
"""

from __future__ import annotations

from typing import Any

from ..config import DnsSDConfig
from ..config.discovery import parse_nameserver
from .file_sd import Refresh
from .targets import Found

LOOKUP_TIMEOUT = 5.0  # seconds for one name, retries included


class DnsSDError(Exception):
    """A lookup failed; ``reason`` is bounded (an exception class or an rcode, never a reply)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class DnsSD:
    """The targets of one ``dns_sd`` entry."""

    def __init__(self, config: DnsSDConfig):
        import dns.asyncresolver  # noqa: F401  (fails at start, not at the first lookup, if missing)

        self.config = config
        self._previous: dict[str, list[Found]] = {}

    def _resolver(self) -> Any:
        import dns.asyncresolver
        import dns.nameserver

        servers = [parse_nameserver(s) for s in self.config.nameservers]
        resolver = dns.asyncresolver.Resolver(configure=not servers)  # configure: /etc/resolv.conf
        if servers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in servers]
        resolver.timeout = min(2.0, LOOKUP_TIMEOUT)
        resolver.lifetime = min(LOOKUP_TIMEOUT, max(self.config.refresh_interval, 1.0))
        return resolver

    async def refresh(self) -> Refresh:
        """Look every name up again; a name whose lookup fails keeps its previous targets."""
        import dns.exception

        result = Refresh()
        try:
            resolver = self._resolver()
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or no nameserver in it
            result.errors = [(name, type(exc).__name__) for name in self.config.names]
            result.found = [f for name in self.config.names for f in self._previous.get(name, [])]
            return result
        for name in self.config.names:
            try:
                found = await self._lookup(resolver, name)
            except DnsSDError as exc:
                result.errors.append((name, exc.reason))
                found = self._previous.get(name, [])
            self._previous[name] = found
            result.found += found
        return result

    async def _lookup(self, resolver: Any, name: str) -> list[Found]:
        import dns.exception
        import dns.name
        import dns.resolver

        kind = self.config.type
        try:
            answer = await resolver.resolve(dns.name.from_text(name), kind, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.NoNameservers:
            raise DnsSDError("no nameserver answered (SERVFAIL or refused)") from None
        except dns.exception.Timeout:
            raise DnsSDError("timeout") from None
        except dns.exception.DNSException as exc:
            raise DnsSDError(type(exc).__name__) from None
        addresses: set[str] = set()
        for record in answer:
            if kind == "SRV":
                host = record.target.to_text(omit_final_dot=True)
                if host in ("", "."):  # "service decidedly not available" (RFC 2782)
                    continue
                addresses.add(f"{host}:{record.port}")
            else:
                address = record.to_text()
                addresses.add(
                    f"[{address}]:{self.config.port}" if ":" in address else f"{address}:{self.config.port}"
                )
        return [Found(address, f"{name} {kind} record {i}") for i, address in enumerate(sorted(addresses))]
