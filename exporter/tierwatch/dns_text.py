"""DNS record data as text, in one canonical form: what the config's values, the recovery step's
updates and the servers' answers are compared in (service_discovery, clients/dns_update.py).

Pure functions of dnspython, imported by the config and the DNS client alike.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype


def canonical(rdtype: str, text: str, origin: str | None = None) -> str:
    """rdata text in dnspython's canonical form (absolute names in lower case, relative ones taken below
    ``origin``, else the root): the form every set here uses. Raises ValueError on text that is not
    valid rdata of that type."""
    base = absolute_name(origin, "origin") if origin else dns.name.root
    rdata = rdata_of(rdtype, text, base)
    return canonical_text(rdata)


def absolute_name(text: str, what: str) -> dns.name.Name:
    try:
        return dns.name.from_text(text, dns.name.root)
    except (dns.exception.DNSException, ValueError):
        raise ValueError(f"{what} {text!r} is not a DNS name") from None


def rdatatype(text: str) -> dns.rdatatype.RdataType:
    try:
        kind = dns.rdatatype.from_text(text)
    except (dns.exception.DNSException, ValueError):
        raise ValueError(f"record type {text!r} is not known") from None
    if dns.rdatatype.is_metatype(kind):
        raise ValueError(f"record type {text!r} is a meta type, not one of records")
    return kind


def rdata_of(rdtype: str, text: str, origin: dns.name.Name) -> dns.rdata.Rdata:
    kind = rdatatype(rdtype)
    try:
        return dns.rdata.from_text(dns.rdataclass.IN, kind, text, origin=origin, relativize=False)
    except (dns.exception.DNSException, ValueError, TypeError, UnicodeError):
        raise ValueError(f"expected {rdtype} record data") from None


def canonical_text(rdata: dns.rdata.Rdata) -> str:
    # through the DNSSEC canonical wire form (RFC 4034 6.2): names in the rdata in lower case, as Knot
    # stores them from zone files and updates and compares an update's prerequisite
    wire = rdata.to_digestable(dns.name.root)
    back = dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, wire, 0, len(wire), dns.name.root)
    return back.to_text(origin=dns.name.root, relativize=False)
