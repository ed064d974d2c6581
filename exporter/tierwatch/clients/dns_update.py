"""DNS records on one authoritative server: direct queries and RFC 2136 updates signed with TSIG.

The recovery service moves a service-discovery record with ``replace_rrset`` (a compare-and-swap: the
update applies only if the record still holds what the kit last saw) and checks it with
``query_rrset``; the exporter checks the same records. Every rdata set is in one canonical text form
(``canonical``), so values from a config, from the kit and from the server compare equal.

Failures raise ``DnsError`` with a ``kind`` the callers count by. Its text names an rcode or an
exception class, never the key's secret nor bytes of a reply. Each call is bounded by its ``timeout``
as a whole (UDP, the TCP retry, connecting); a DNS message is at most 65,535 bytes by protocol.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from ..config.secrets import Secret
from ..dns_text import absolute_name, canonical_text, rdata_of, rdatatype

Kind = Literal["unavailable", "refused", "conflict", "protocol"]
ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")

_CONFLICT = {dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.YXDOMAIN}
_REFUSED = {dns.rcode.REFUSED, dns.rcode.NOTAUTH, dns.rcode.NOTZONE}
_HINTS = {
    dns.rcode.REFUSED: "the server's ACL, or a zone it does not serve",
    dns.rcode.NOTAUTH: "not authoritative for the zone, or a bad TSIG key",
    dns.rcode.NOTZONE: "the name is not in the zone",
    dns.rcode.NXRRSET: "the record is not what was expected",
    dns.rcode.YXRRSET: "the record exists",
    dns.rcode.NXDOMAIN: "the name does not exist",
    dns.rcode.YXDOMAIN: "the name exists",
    dns.rcode.SERVFAIL: "the server failed",
}
# errors the server reports in its TSIG record: our request did not verify there
_PEER_TSIG = {
    dns.tsig.PeerBadKey: "BADKEY (the server does not know the key)",
    dns.tsig.PeerBadSignature: "BADSIG (the key's secret differs from the server's)",
    dns.tsig.PeerBadTime: "BADTIME (the clocks differ too much)",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}
# the server's answer failed our own TSIG check: it is not known to come from the server
_LOCAL_TSIG = (
    dns.tsig.BadSignature,
    dns.tsig.BadTime,
    dns.tsig.BadKey,
    dns.tsig.BadAlgorithm,
    dns.message.UnknownTSIGKey,
)


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key as the server knows it; ``secret`` is base64 text. Raises ValueError (without the
    secret) when the name, algorithm or secret is not usable."""

    name: str
    algorithm: str
    secret: Secret

    def __post_init__(self) -> None:
        absolute_name(self.name, "TSIG key name")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"TSIG algorithm {self.algorithm!r}: expected one of {', '.join(ALGORITHMS)}")
        try:
            decoded = base64.b64decode(self.secret.reveal(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"TSIG key {self.name}: the secret is not base64") from None
        if not decoded:
            raise ValueError(f"TSIG key {self.name}: the secret is empty")

    def _dns_key(self) -> dns.tsig.Key:
        # dns.tsig.Key's repr shows the secret: it never leaves this module's calls
        return dns.tsig.Key(
            dns.name.from_text(self.name),
            base64.b64decode(self.secret.reveal()),
            dns.name.from_text(self.algorithm),
        )


class DnsError(Exception):
    """A query or update failed; ``kind`` says how (see ``Kind``), the text is short and secret-free."""

    def __init__(self, kind: Kind, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind: Kind = kind
        self.detail = detail


def rcode_kind(rcode: int) -> Kind | None:
    """What an answer's rcode means for the caller: None for NOERROR."""
    if rcode == dns.rcode.NOERROR:
        return None
    if rcode in _CONFLICT:
        return "conflict"
    if rcode in _REFUSED:
        return "refused"
    if rcode == dns.rcode.SERVFAIL:
        return "unavailable"
    return "protocol"


def rcode_error(rcode: int) -> DnsError:
    """The DnsError for an answer with a failing ``rcode``."""
    kind = rcode_kind(rcode) or "protocol"
    name = dns.rcode.to_text(rcode)
    hint = _HINTS.get(rcode)
    return DnsError(kind, f"{name} ({hint})" if hint else name)


class RRset(frozenset[str]):
    """A record set's canonical rdata texts, with the TTL the server answered (None when empty)."""

    ttl: int | None = None

    @classmethod
    def of(cls, values: frozenset[str], ttl: int | None) -> RRset:
        found = cls(values)
        found.ttl = ttl
        return found


async def query_rrset(server: tuple[str, int], name: str, rdtype: str, timeout: float) -> RRset:
    """Ask ``server`` directly (no recursion) for name/type; the RRset's canonical rdata texts (and its
    TTL), empty when the name or the type has none (NXDOMAIN / NODATA). UDP, then TCP if truncated;
    the whole exchange bounded by ``timeout``. CNAME records of other names in the answer are not
    followed. Raises DnsError (ValueError for a name or type that is not valid)."""
    qname = absolute_name(name, "name")
    qtype = rdatatype(rdtype)
    query = dns.message.make_query(qname, qtype, dns.rdataclass.IN)
    query.flags &= ~dns.flags.RD
    response = await _exchange(server, query, timeout, tcp=False)
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return RRset()
    if rcode != dns.rcode.NOERROR:
        raise rcode_error(rcode)
    rrset = response.get_rrset(response.answer, qname, dns.rdataclass.IN, qtype)
    if rrset is None:
        return RRset()
    return RRset.of(frozenset(canonical_text(rdata) for rdata in rrset), int(rrset.ttl))


async def replace_rrset(
    server: tuple[str, int],
    zone: str,
    key: TsigKey,
    name: str,
    rdtype: str,
    ttl: int,
    expected: frozenset[str],
    new: frozenset[str],
    timeout: float,
) -> None:
    """One RFC 2136 UPDATE over TCP signed with ``key``: prerequisite "the RRset is exactly
    ``expected``" (value-dependent; empty ``expected``: "no RRset of this type at name"), then delete
    the RRset and add ``new`` with ``ttl``. The answer's TSIG is verified. Raises DnsError
    ("conflict" when the prerequisite failed; ValueError for arguments that are not valid)."""
    zone_name = absolute_name(zone, "zone")
    owner = absolute_name(name, "name")
    if not owner.is_subdomain(zone_name):
        raise ValueError(f"name {owner} is not in zone {zone_name}")
    kind = rdatatype(rdtype)
    if not 0 <= ttl <= 0x7FFFFFFF:
        raise ValueError(f"TTL {ttl} out of range")
    was = [rdata_of(rdtype, text, dns.name.root) for text in sorted(expected)]
    now = [rdata_of(rdtype, text, dns.name.root) for text in sorted(new)]

    update = dns.update.UpdateMessage(zone_name)
    if was:
        update.present(owner, *was)
    else:
        update.absent(owner, kind)
    update.delete(owner, kind)
    if now:
        update.add(owner, ttl, *now)
    update.use_tsig(key._dns_key())

    response = await _exchange(server, update, timeout, tcp=True)
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        raise rcode_error(rcode)


async def _exchange(
    server: tuple[str, int], message: dns.message.Message, timeout: float, *, tcp: bool
) -> dns.message.Message:
    """Send ``message`` and return the answer, its TSIG verified when ``message`` is signed."""
    host, port = server
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"server {host!r}: expected an IP address") from None
    try:
        async with asyncio.timeout(timeout):
            if not tcp:
                # a stray datagram (another source, another id) is skipped: the deadline still holds
                response = await dns.asyncquery.udp(message, host, port=port, ignore_unexpected=True)
                if not response.flags & dns.flags.TC:
                    return response
            wire = await _tcp_exchange(host, port, message.to_wire())
    except (TimeoutError, dns.exception.Timeout):
        raise DnsError("unavailable", f"no answer from {host}:{port} within {timeout:g}s") from None
    except ConnectionRefusedError:
        raise DnsError("unavailable", f"connection to {host}:{port} refused") from None
    except (ConnectionError, EOFError):
        raise DnsError("unavailable", f"{host}:{port} closed the connection before answering") from None
    except OSError as exc:
        raise DnsError("unavailable", f"{host}:{port}: {exc.strerror or type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - a garbled reply may break the parser anywhere
        raise _garbled(exc) from None
    return _answer(message, wire)


async def _tcp_exchange(host: str, port: int, wire: bytes) -> bytes:
    """One message out, one back, each behind its two-byte length (so at most 65,535 bytes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()


def _answer(query: dns.message.Message, wire: bytes) -> dns.message.Message:
    """Parse the answer to ``query``: first without TSIG checks, for an unsigned refusal's rcode, then
    (for a signed query) verified against the query's key and MAC."""
    try:
        plain = dns.message.from_wire(wire, keyring=False)
    except Exception as exc:  # noqa: BLE001 - see _exchange
        raise _garbled(exc) from None
    if not query.is_response(plain):
        raise DnsError("protocol", "the answer does not match the question")
    if query.keyring is None:
        return plain
    if not plain.had_tsig:
        # a server refuses without a signature what it cannot tie to the key (e.g. a zone it does not
        # serve): its rcode is worth reporting, but only a failure may be taken unsigned
        rcode = plain.rcode()
        if rcode == dns.rcode.NOERROR:
            raise DnsError("protocol", "the answer is not signed")
        error = rcode_error(rcode)
        raise DnsError(error.kind, f"{error.detail}, unsigned answer")
    try:
        return dns.message.from_wire(wire, keyring=query.keyring, request_mac=query.mac)
    except dns.tsig.PeerError as exc:
        raise DnsError("refused", _PEER_TSIG.get(type(exc), "TSIG error")) from None
    except _LOCAL_TSIG as exc:
        raise DnsError("protocol", f"the answer's TSIG does not verify ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - see _exchange
        raise _garbled(exc) from None


def _garbled(exc: Exception) -> DnsError:
    return DnsError("protocol", f"garbled or unexpected answer ({type(exc).__name__})")
