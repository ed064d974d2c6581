"""The one signature every probe implements, and how failures are classified.

A probe object belongs to one target and lives as long as the exporter: it owns the target's
connection(s), reuses them between probes, and drops them in ``reset`` after any failure (including
a timeout that cancelled it mid-request), so a dead or hanging target never leaks a socket.

The deadline has one owner, the caller (the monitor), as a blackbox_exporter prober gets its
handler's context deadline: ``probe(deadline)`` is an instant of the event loop's clock
(``loop.time()``), the caller cancels the probe at that instant if it still runs, and the probe sizes
its client calls (connect, statement and command timeouts) and any earlier margin of its own from it.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..clients.addresses import target_at
from ..config import ClusterConfig, Secret, TargetConfig
from ..metric_catalog import FAILURE_REASONS, MetricSpec


@dataclass(frozen=True)
class TargetInfo:
    """Everything a probe needs to know about its target."""

    tier: str
    cluster: ClusterConfig
    target: TargetConfig
    password: Secret | None
    timeout: float  # monitor.timeout: what the monitor gives each probe (its deadline is that far off)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def region(self) -> str:
        return self.target.region

    def peer_by_address(self, host: str, port: int) -> str | None:
        """The name of the target in the same cluster at this host and port (clients.addresses), if any.

        Used by a primary to attribute what it knows about its replicas (lag) to their targets.
        """
        peer = target_at(self.cluster.targets, host, port)
        return peer.name if peer else None

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """Values of the target labels (tier, cluster, target, region)."""
        return (self.tier, self.cluster.name, self.target.name, self.target.region)


@dataclass(frozen=True)
class Sample:
    """One value of a catalogued metric; ``labels`` are the values of the spec's own labels."""

    spec: MetricSpec
    labels: tuple[str, ...]
    value: float


@dataclass
class Observation:
    """What one successful probe saw: the target's role (if it has one) and tier-specific samples."""

    role: str | None = None
    samples: list[Sample] = field(default_factory=list)
    peer_samples: dict[str, list[Sample]] = field(default_factory=dict)
    # the probe's own timing of its exchange (from connecting or writing the request to the answer),
    # when it has one: the monitor records it rather than the time until the loop resumed the probe
    io_seconds: float | None = None

    def add(self, spec: MetricSpec, value: float, *labels: str) -> None:
        """Record ``value`` for ``spec`` with the spec's own label values, in order."""
        if len(labels) != len(spec.labels):
            raise ValueError(f"{spec.name} takes labels {spec.labels}, got {labels}")
        self.samples.append(Sample(spec, labels, float(value)))

    def add_for(self, peer: str, spec: MetricSpec, value: float, *labels: str) -> None:
        """Record a sample about another target of the same cluster (``peer`` is its name), such as the
        replication lag of a replica as its primary sees it. The peer's own samples win on a clash."""
        if len(labels) != len(spec.labels):
            raise ValueError(f"{spec.name} takes labels {spec.labels}, got {labels}")
        self.peer_samples.setdefault(peer, []).append(Sample(spec, labels, float(value)))


class ProbeFailure(Exception):
    """A probe failed for a known reason; the message must never hold a secret."""

    def __init__(self, reason: str, message: str = ""):
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason}")
        super().__init__(message or reason)
        self.reason = reason


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (an instant of the running loop's clock), never negative."""
    return max(0.0, deadline - asyncio.get_running_loop().time())


class Probe(ABC):
    """A prober for one target. Subclasses implement ``probe`` and, if they hold connections,
    ``close``; ``reset`` defaults to ``close`` (reconnect lazily on the next probe)."""

    def __init__(self, info: TargetInfo):
        self.info = info

    @abstractmethod
    async def probe(self, deadline: float | None = None) -> Observation:
        """Probe the target once, by ``deadline`` (``loop.time()`` clock; the caller cancels the probe
        then if it still runs); raise on failure (ProbeFailure for known reasons). Without a
        deadline (a probe run on its own) it is ``info.timeout`` from now: see ``deadline``."""

    def deadline(self, deadline: float | None) -> float:
        """``deadline``, or for a probe run on its own, ``info.timeout`` from now."""
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + self.info.timeout

    async def reset(self) -> None:
        """Drop connection state after a failure so the next probe starts clean."""
        await self.close()

    async def close(self) -> None:  # noqa: B027 - a probe without connections needs no cleanup
        """Release every connection the probe holds."""


def classify_failure(exc: BaseException) -> str:
    """Map an exception from any client library to one of FAILURE_REASONS, by walking its cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ProbeFailure):
            return current.reason
        if isinstance(current, TimeoutError):
            return "timeout"
        if isinstance(current, ConnectionRefusedError):
            return "refused"
        if isinstance(current, ssl.SSLError):
            return "protocol"
        if isinstance(current, OSError) and current.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return "refused"
        name = type(current).__name__
        if "Timeout" in name:
            return "timeout"
        if "Authentication" in name or "InvalidPassword" in name or "AuthorizationError" in name:
            return "auth"
        if "Protocol" in name or ("Response" in name and "Error" in name):
            return "protocol"
        current = current.__cause__ or current.__context__
    return "error"


def describe_failure(exc: BaseException) -> str:
    """A short, secret-free description for logs and the status page: the exception type only."""
    if isinstance(exc, ProbeFailure):
        return exc.reason if str(exc) == exc.reason else f"{exc.reason}: {exc}"
    return type(exc).__name__
