"""VIP probe of a load-balancer pair: is the shared address served, and by which LB.

Each LB names itself in a response header (default ``X-Served-By``); in HAProxy that is one line in
the frontend: ``http-after-response set-header X-Served-By lb-1``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..clients.http import HttpClient, HttpRules, ssl_context
from ..config import ClusterConfig
from ..metric_catalog import metric

# The VIP is up when the LB answers at all with 2xx/3xx (a redirect to https is an answer): the
# first answer is judged, never followed, so its served-by header names the LB that gave it.
VIP_RULES = HttpRules(accept=frozenset(range(200, 400)), follow_redirects=False)

VIP_UP = metric(
    "tierwatch_lb_vip_up",
    "gauge",
    "1 if the load-balancer pair's shared address (VIP) answered with a 2xx/3xx status.",
    scope="cluster",
    section="lb",
)
VIP_IDENTIFIED = metric(
    "tierwatch_lb_vip_identified",
    "gauge",
    "1 if the VIP's answer named one of the cluster's LB targets in its served-by header.",
    scope="cluster",
    section="lb",
)
VIP_DURATION = metric(
    "tierwatch_lb_vip_probe_duration_seconds",
    "gauge",
    "Latency of the last VIP probe.",
    scope="cluster",
    section="lb",
)


@dataclass(frozen=True)
class VipResult:
    """Outcome of one VIP probe."""

    up: bool
    served_by: str | None
    duration: float


class VipProbe:
    """GETs the VIP URL over a fresh connection each time, since the address may move between LBs."""

    def __init__(self, cluster: ClusterConfig, timeout: float):
        assert cluster.vip is not None
        self.url = cluster.vip
        self.header = cluster.vip_header
        self.timeout = timeout
        self._client: HttpClient | None = None

    async def probe(self, names: set[str], deadline: float | None = None) -> VipResult:
        """Probe once, by ``deadline`` (``loop.time()`` clock; else ``timeout`` from now); never raises."""
        if self._client is None:
            self._client = HttpClient(self.timeout, ssl_context(None, True), fresh_connections=True)
        start = time.perf_counter()
        try:
            answer = await self._client.check(self.url, VIP_RULES, deadline=deadline)
        except Exception:  # noqa: BLE001 - any failure (HttpFailure above all) means the VIP is not served
            await self.close()
            return VipResult(False, None, time.perf_counter() - start)
        served_by = answer.headers.get(self.header.lower())
        return VipResult(True, served_by if served_by in names else None, answer.elapsed)

    async def close(self) -> None:
        """Release the client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
