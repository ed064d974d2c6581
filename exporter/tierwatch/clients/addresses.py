"""Where a target listens, and which configured target an address a server reported belongs to.

Servers report their peers as ``host:port`` (Redis INFO, Sentinel, PostgreSQL's WAL receiver and
``primary_conninfo``); this is the one place that turns such an address into a configured target.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

from ..config import TargetConfig

Address = tuple[str, int]

DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6379,
    "postgresql": 5432,
    "postgres": 5432,
    "http": 80,
    "https": 443,
}
LOOPBACK_NAMES = frozenset({"localhost", "::ffff:127.0.0.1"})


def normal_host(host: str) -> str:
    """``host`` with the names of 127.0.0.1 folded into it (and brackets, case dropped)."""
    host = host.strip().strip("[]").lower()
    return "127.0.0.1" if host in LOOPBACK_NAMES else host


def url_address(url: str) -> Address | None:
    """(host, port) a URL names, host normalised, port defaulted by scheme; None for a unix socket
    or a URL without a single host and port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # "host:5432,host2:5433" (several hosts) or a port out of range
        return None
    query = parse_qs(parts.query)  # libpq URLs may name the host and port as parameters
    host = query.get("host", [parts.hostname or ""])[-1]
    given = query.get("port", [str(port or DEFAULT_PORTS.get(parts.scheme, ""))])[-1]
    if not host or host.startswith("/") or "," in host or not given.isdigit():
        return None
    return normal_host(host), int(given)


def target_address(target: TargetConfig) -> Address | None:
    """(host, port) of a target from its URL (see ``url_address``)."""
    return url_address(target.url)


def target_at(targets: Iterable[TargetConfig], host: str, port: int) -> TargetConfig | None:
    """The configured target listening at ``host:port`` (host normalised), if exactly one does."""
    want = (normal_host(host), port)
    found = [t for t in targets if target_address(t) == want]
    return found[0] if len(found) == 1 else None


def show(address: Address) -> str:
    """``host:port`` for audit records and messages."""
    return f"{address[0]}:{address[1]}"
