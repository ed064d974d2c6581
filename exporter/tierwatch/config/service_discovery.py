"""The top-level ``service_discovery:`` section: DNS records that follow a cluster's primary (Redis,
PostgreSQL) or an app cluster's active region, updated by the recovery service after a failover
(RFC 2136, signed with TSIG) and checked by the exporter.

Every record value is kept in one canonical text form (dnspython's, names absolute), so a value
configured by hand, one derived from a target's URL and one read back from the server compare equal.
Problems never repeat a value (a URL may sit next to something secret), only names and keys.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from ..durations import parse_duration
from .discovery import DNS_NAME_PATTERN
from .target import Name, _Strict

Duration = Annotated[float, BeforeValidator(parse_duration)]
RecordType = Literal["A", "AAAA", "CNAME", "SRV"]
Follows = Literal["primary", "region"]
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
# the tiers whose records follow a primary, and the port a URL without one means
PRIMARY_TIERS = {"redis": 6379, "postgres": 5432}
REGION_TIERS = frozenset({"app"})


def _dns_name(value: str) -> str:
    if not DNS_NAME_PATTERN.fullmatch(value):
        raise ValueError("expected a DNS name (letters, digits, '-', '_', dot-separated)")
    return value


def _absolute(value: str) -> str:
    if not value.endswith("."):
        raise ValueError("expected an absolute DNS name ending with '.'")
    return value.lower()


DnsName = Annotated[str, AfterValidator(_dns_name)]
AbsoluteName = Annotated[str, AfterValidator(_dns_name), AfterValidator(_absolute)]


class DnsKeyConfig(_Strict):
    """The TSIG key updates are signed with; the secret (base64, as in knot.conf or named.conf) is
    read from ``secret_file`` at load time like every other secret."""

    name: AbsoluteName
    algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512"] = "hmac-sha256"
    secret_file: Annotated[str, Field(min_length=1, max_length=4096)]


class DnsRecordConfig(_Strict):
    """One record the kit owns. ``values``: member (target name for a primary record, region for an
    app record) → record data; a primary record's default comes from the target's URL."""

    name: DnsName
    cluster: Name
    type: RecordType = "SRV"
    values: dict[str, Annotated[str, Field(min_length=1, max_length=1024)]] = {}

    def fqdn(self, zone: str) -> str:
        """The owner name, absolute (a relative ``name`` is taken below ``zone``)."""
        name = self.name.lower()
        return name if name.endswith(".") else f"{name}.{zone}"


class ServiceDiscovery(_Strict):
    """Where records are updated and checked, with what key, TTL and time limits."""

    server: Annotated[str, Field(pattern=r"^[^\s:]+:[0-9]{1,5}$")]
    zone: AbsoluteName
    key: DnsKeyConfig
    ttl: Annotated[int, Field(ge=1, le=86400)] = 30
    timeout: Duration = 2.0
    update_timeout: Duration = 10.0
    records: Annotated[list[DnsRecordConfig], Field(min_length=1, max_length=1000)]

    @property
    def server_address(self) -> tuple[str, int]:
        host, _, port = self.server.rpartition(":")
        return host.strip("[]"), int(port)


def canonical(rdtype: str, text: str, origin: str | None = None) -> str:
    """``text`` as record data in dns_text's canonical form; ValueError if it is not valid data."""
    from ..dns_text import canonical as text_form  # dnspython is loaded only for this section

    return text_form(rdtype, text, origin)


def record_label(fqdn: str) -> str:
    """A record's ``record`` label value: its owner name without the final dot."""
    return fqdn.rstrip(".")


def follows(tier: str) -> Follows | None:
    """What a record of a cluster of ``tier`` follows; None for a tier that has neither."""
    if tier in PRIMARY_TIERS:
        return "primary"
    if tier in REGION_TIERS:
        return "region"
    return None


def derived_value(rdtype: str, url: str, tier: str) -> str | None:
    """The record data a target's URL gives: A/AAAA its IP host, CNAME its host name, SRV ``0 0 port
    host.`` (a host name); None when the URL cannot give one (an IP where a name is needed, ...)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.scheme == "unix":
        return None
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if rdtype in ("A", "AAAA"):
        if address is None or (rdtype == "A") != (address.version == 4):
            return None
        return canonical(rdtype, str(address))
    if address is not None:
        return None
    try:
        if rdtype == "CNAME":
            return canonical(rdtype, f"{host}.")
        return canonical(rdtype, f"0 0 {port or PRIMARY_TIERS.get(tier, 0)} {host}.")
    except ValueError:
        return None


def record_values(record: DnsRecordConfig, cluster: Any, zone: str) -> dict[str, str]:
    """Member (target or region) → canonical record data, for every member that has one."""
    out: dict[str, str] = {}
    for member, text in record.values.items():
        try:
            out[member] = canonical(record.type, text, zone)
        except ValueError:
            continue
    if follows(cluster.tier) == "primary":
        for target in cluster.targets:
            if target.name not in out:
                value = derived_value(record.type, target.url, cluster.tier)
                if value is not None:
                    out[target.name] = value
    return out


def service_discovery_problems(
    settings: ServiceDiscovery, clusters: Sequence[Any]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Problems that need the rest of the config: a record's cluster must exist and have a tier that
    has a primary or regions, its values must parse and name its members, and every member without
    a value must be one the URL can give."""
    by_name = {cluster.name: cluster for cluster in clusters}
    base: tuple[Any, ...] = ("service_discovery",)
    if settings.timeout > settings.update_timeout:
        yield (*base, "update_timeout"), "expected at least the timeout of one exchange"
    seen: set[tuple[str, str]] = set()
    for index, record in enumerate(settings.records):
        loc = (*base, "records", index)
        fqdn = record.fqdn(settings.zone)
        if fqdn != settings.zone and not fqdn.endswith(f".{settings.zone}"):
            yield (*loc, "name"), f"expected a name inside the zone {settings.zone}"
        if (fqdn, record.type) in seen:
            yield (*loc, "name"), f"duplicate record {fqdn} {record.type}"
        seen.add((fqdn, record.type))
        cluster = by_name.get(record.cluster)
        if cluster is None:
            yield (*loc, "cluster"), "no cluster of that name in clusters"
            continue
        kind = follows(cluster.tier)
        if kind is None:
            yield (*loc, "cluster"), "expected a redis, postgres or app cluster"
            continue
        members = (
            {t.name for t in cluster.targets} if kind == "primary" else {t.region for t in cluster.targets}
        )
        for member, text in record.values.items():
            if member not in members and not (kind == "primary" and cluster.discovery):
                what = "target" if kind == "primary" else "region"
                yield (*loc, "values", member), f"no {what} of that name in cluster {cluster.name}"
            try:
                canonical(record.type, text, settings.zone)
            except ValueError as exc:
                yield (*loc, "values", member), str(exc)
        values = record_values(record, cluster, settings.zone)
        for member in sorted(members - set(values)):
            if kind == "region":
                yield (*loc, "values"), f"expected a value for region {member}"
            else:
                yield (
                    (*loc, "values"),
                    f"target {member}: its URL gives no {record.type} data; give it in values",
                )
