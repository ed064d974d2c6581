"""From a discovered address (plus its labels) to a ``TargetConfig``, by the static targets' rules.

Labels a file_sd group may carry (DNS records carry none; the discovery entry gives the defaults):

- ``target``: the target's name (the ``target`` label); default ``CLUSTER-HOST-PORT`` made valid;
- ``region``: its region; default the entry's ``region``; a target without one is skipped;
- ``__scheme__``, ``__path__``: override the entry's ``scheme`` and ``path`` for the group.

Every other label is ignored (``__meta_*`` ones, and labels such as ``env`` or ``job`` that a file shared
with Prometheus carries): the label model is fixed, so they could never become series.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from pydantic import ValidationError

from ..config import DnsSDConfig, FileSDConfig, TargetConfig, target_url_problem

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
KNOWN_LABELS = ("target", "region", "__scheme__", "__path__")


@dataclass(frozen=True)
class Found:
    """One address a source found, its labels, and where (file and group, or DNS name): for logs."""

    address: str
    where: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Mapped:
    """What became of a source's addresses: targets (with where each came from) and skipped ones."""

    targets: list[tuple[str, TargetConfig]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)


def split_address(address: str) -> tuple[str, int | None]:
    """``host:port``, ``host`` or ``[v6]:port`` -> (host, port); raises ValueError on anything else
    (user info, a path, a scheme), so no part of a URL can be smuggled in as an address."""
    if not address or any(c in address for c in "/@?#\\ \t") or len(address) > 300:
        raise ValueError("expected host:port")
    parts = urlsplit("//" + address)
    host, port = parts.hostname, parts.port  # .port raises ValueError on a bad port
    if not host:
        raise ValueError("expected host:port")
    return host, port


def derived_name(cluster: str, host: str, port: int | None) -> str:
    """A stable, valid target name for an address: ``CLUSTER-HOST-PORT``, other characters as ``-``,
    shortened with a hash past 63 characters."""
    raw = f"{cluster}-{host}" + (f"-{port}" if port is not None else "")
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", raw)
    if len(name) > 63:
        name = f"{name[:54]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return name


def build_url(scheme: str, host: str, port: int | None, path: str, username: str | None) -> str:
    """``scheme://[username@]host[:port][path]`` (IPv6 hosts in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{username + '@' if username else ''}{shown}{f':{port}' if port else ''}{path}"


def map_targets(
    cluster: str, tier: str, template: FileSDConfig | DnsSDConfig, found: Iterable[Found]
) -> Mapped:
    """Turn what a source found into targets of ``cluster``; every address that would not be a valid
    static target is skipped with a reason that never repeats the address or a label's value."""
    out = Mapped()
    for item in found:
        target, reason = _one(cluster, tier, template, item)
        if target is not None:
            out.targets.append((item.where, target))
        else:
            out.skipped.append((item.where, reason or "invalid"))
    return out


def _one(
    cluster: str, tier: str, template: FileSDConfig | DnsSDConfig, item: Found
) -> tuple[TargetConfig | None, str | None]:
    try:
        host, port = split_address(item.address)
    except ValueError:
        return None, "address: expected host:port (no scheme, user, path or query)"
    labels = item.labels
    name = labels.get("target") or derived_name(cluster, host, port)
    if not NAME_RE.match(name):
        return None, "target label: expected a name of letters, digits, '.', '_' or '-' (at most 63)"
    region = labels.get("region") or template.region
    if region is None:
        return None, "no region: give the group a region label or the discovery entry a region"
    if not NAME_RE.match(region):
        return None, "region label: expected a name of letters, digits, '.', '_' or '-' (at most 63)"
    scheme = labels.get("__scheme__") or template.scheme_for(tier)
    path = labels.get("__path__", template.path)
    if path and (not path.startswith("/") or any(c in path for c in "?# @")):
        return None, "__path__ label: expected a path starting with '/', without '?', '#', '@' or spaces"
    url = build_url(scheme, host, port, path, template.username)
    problem = target_url_problem(tier, url)
    if problem is not None:
        return None, f"url: {problem}"
    try:
        target = TargetConfig.model_validate({**template.options, "name": name, "region": region, "url": url})
    except ValidationError as exc:
        keys = sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]})
        return None, f"invalid {', '.join(keys) or 'target'}"
    return target, None
