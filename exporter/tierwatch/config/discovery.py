"""The ``discovery:`` list of a cluster: where its targets come from besides the static ``targets:``.

Two sources, each a list entry with exactly one key:

- ``file_sd``: Prometheus file_sd files (JSON or YAML lists of ``{targets: [host:port], labels: {}}``);
- ``dns_sd``: DNS SRV records (host and port) or A/AAAA records (addresses, with a configured port).

Both share how a discovered address becomes a target (``scheme``, ``path``, ``username``, the default
``region`` and ``options``, the target keys every discovered target gets). The checks here run at load
time like every other semantic check; the discovery runner (``tierwatch.discovery``) applies them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError

from ..durations import parse_duration
from ..tier_catalog import HTTP_TIERS, TIERS, URL_SCHEMES
from .target import NAME_PATTERN, TargetConfig, _Strict

Duration = Annotated[float, BeforeValidator(parse_duration)]
# Prometheus's own check of a file_sd path: a '*' only in the last path segment, a .json/.yml/.yaml name
FILE_SD_PATTERN = re.compile(r"^[^*]*(\*[^/]*)?\.(json|yml|yaml|JSON|YML|YAML)$")
_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
DNS_NAME_PATTERN = re.compile(rf"^(?=.{{1,254}}$)({_LABEL}\.)*{_LABEL}\.?$")
DEFAULT_REFRESH = 30.0
MIN_REFRESH = 0.1
# target keys that a discovery entry may not set for all its targets: each target has its own
PER_TARGET_KEYS = frozenset({"name", "region", "url", "stats_socket", "stats_url"})
HTTP_ONLY_KEYS = frozenset(
    {"expect_status", "expect_body", "follow_redirects", "tls_skip_verify", "tls_ca_file"}
)
_HTTP_TIERS_TEXT = " and ".join(HTTP_TIERS)  # "lb and app"


class _TargetTemplate(_Strict):
    """How a discovered address becomes a target: ``scheme://[username@]address[path]``."""

    region: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None
    scheme: str | None = None  # default: the tier's discovery_scheme (tier_catalog)
    path: str = ""
    username: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$")] | None = None
    refresh_interval: Duration = DEFAULT_REFRESH
    # target keys given to every discovered target (expect_status, tls_ca_file, ...): checked at load
    # time by the same model as a static target's
    options: dict[str, Any] = {}

    def scheme_for(self, tier: str) -> str:
        """The URL scheme of the discovered targets of a cluster of ``tier``."""
        return self.scheme or TIERS[tier].discovery_scheme


class FileSDConfig(_TargetTemplate):
    files: Annotated[list[str], Field(min_length=1, max_length=100)]


class DnsSDConfig(_TargetTemplate):
    names: Annotated[list[str], Field(min_length=1, max_length=100)]
    type: Literal["SRV", "A", "AAAA"] = "SRV"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None  # A/AAAA only: SRV records carry theirs
    # "IP" or "IP:port" ("[IPv6]:port"); empty: the system's resolver (/etc/resolv.conf)
    nameservers: Annotated[list[str], Field(max_length=10)] = []


class DiscoveryConfig(_Strict):
    file_sd: FileSDConfig | None = None
    dns_sd: DnsSDConfig | None = None

    @property
    def source(self) -> FileSDConfig | DnsSDConfig:
        """The one source this entry configures (checked at load time)."""
        source = self.file_sd or self.dns_sd
        assert source is not None
        return source

    @property
    def kind(self) -> str:
        """``file_sd`` or ``dns_sd``: the ``source`` label of the discovery metrics."""
        return "file_sd" if self.file_sd is not None else "dns_sd"


def parse_nameserver(text: str) -> tuple[str, int]:
    """``IP`` or ``IP:port`` or ``[IPv6]:port`` -> (IP, port); raises ValueError."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(text)
        port = int(rest[1:]) if rest else 53
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(text)
    return host, port


def discovery_problems(
    tier: str, prefix: tuple[Any, ...], entries: list[DiscoveryConfig]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """(key path, expectation) for every problem of a cluster's ``discovery`` list; values are never
    repeated (an option could hold something private)."""
    for di, entry in enumerate(entries):
        where = (*prefix, di)
        if (entry.file_sd is None) == (entry.dns_sd is None):
            yield where, "expected exactly one of file_sd or dns_sd"
            continue
        source = entry.source
        where = (*where, entry.kind)
        schemes = tuple(s for s in URL_SCHEMES[tier] if s != "unix")
        if source.scheme is not None and source.scheme not in schemes:
            yield (*where, "scheme"), f"expected one of {', '.join(schemes)} for a cluster of tier {tier}"
        if source.path and (not source.path.startswith("/") or any(c in source.path for c in "?# @")):
            yield (*where, "path"), "expected a path starting with '/', without '?', '#', '@' or spaces"
        if source.refresh_interval < MIN_REFRESH:
            yield (*where, "refresh_interval"), f"expected at least {MIN_REFRESH:g}s"
        for key in sorted(source.options):
            if key in PER_TARGET_KEYS:
                yield (*where, "options", key), "is set per discovered target; not allowed in options"
            elif key in HTTP_ONLY_KEYS and tier not in HTTP_TIERS:
                yield (*where, "options", key), f"is only valid on HTTP targets (tiers {_HTTP_TIERS_TEXT})"
        # the options must pass the static targets' own model (name, region and url are stand-ins)
        sample = {k: v for k, v in source.options.items() if k not in PER_TARGET_KEYS}
        try:
            TargetConfig.model_validate({**sample, "name": "x", "region": "x", "url": f"{schemes[0]}://x"})
        except ValidationError as exc:
            for err in exc.errors():
                yield (*where, "options", *err["loc"]), _option_expectation(err)
        if isinstance(source, FileSDConfig):
            for fi, pattern in enumerate(source.files):
                if not FILE_SD_PATTERN.match(pattern):
                    yield (
                        (*where, "files", fi),
                        "expected a .json, .yml or .yaml path, with '*' only in its last segment",
                    )
        else:
            if source.region is None:
                yield (*where, "region"), "required for dns_sd (DNS records carry no labels)"
            for ni, name in enumerate(source.names):
                if not DNS_NAME_PATTERN.match(name):
                    yield (*where, "names", ni), "expected a DNS name"
            if source.type == "SRV" and source.port is not None:
                yield (*where, "port"), "SRV records give the port: set port only with type A or AAAA"
            if source.type != "SRV" and source.port is None:
                yield (*where, "port"), f"required with type {source.type} (the records give no port)"
            for si, server in enumerate(source.nameservers):
                try:
                    parse_nameserver(server)
                except ValueError:
                    yield (*where, "nameservers", si), "expected an IP address, IP:port or [IPv6]:port"


def _option_expectation(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    message: str = err["msg"]
    return message[:1].lower() + message[1:]
