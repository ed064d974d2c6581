"""VIP probe of a load-balancer pair: is the shared address served, and by which LB.

Each LB names itself in a response header (default ``X-Served-By``); in HAProxy that is one line in
the frontend: ``http-after-response set-header X-Served-By lb-1``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from ..config import ClusterConfig
from ..metric_catalog import metric
from .http import make_client, ssl_context

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
        self._client: httpx.AsyncClient | None = None

    async def probe(self, names: set[str]) -> VipResult:
        """Probe once; never raises."""
        if self._client is None:
            self._client = make_client(self.timeout, ssl_context(None, True))
        start = time.perf_counter()
        try:
            response = await self._client.get(self.url, headers={"Connection": "close"})
        except Exception:  # noqa: BLE001 - any failure means the VIP is not served
            await self.close()
            return VipResult(False, None, time.perf_counter() - start)
        served_by = response.headers.get(self.header)
        up = 200 <= response.status_code < 400
        return VipResult(up, served_by if served_by in names else None, time.perf_counter() - start)

    async def close(self) -> None:
        """Release the client."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
