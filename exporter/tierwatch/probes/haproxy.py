"""HAProxy probe: the LB's own health URL for liveness, plus proxy and server states, sessions, queues
and response-code counters from its runtime API (``stats_socket``) or CSV stats page (``stats_url``).

The runtime API connection is kept open in interactive ("prompt") mode, so steady-state probing opens
no new connection to the LB.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from ..clients.haproxy import (
    SERVER_STATES,
    HAProxyError,
    RuntimeApi,
    ShowStat,
    parse_show_stat,
    stats_page,
)
from ..clients.http import HttpClient, HttpFailure, tls_verify
from ..metric_catalog import metric
from .base import Observation, Probe, ProbeFailure, TargetInfo
from .http import HttpProbe

# parse_show_stat stays importable from here for older callers; new code imports clients.haproxy
__all__ = ["HAProxyProbe", "add_stats", "parse_show_stat"]

A = TypeVar("A")
B = TypeVar("B")
_PROXY = ("proxy",)
_SERVER = ("proxy", "server")

FRONTEND_SESSIONS = metric(
    "tierwatch_lb_frontend_sessions_current", "gauge", "Current sessions on a frontend.", _PROXY, section="lb"
)
FRONTEND_REQUESTS = metric(
    "tierwatch_lb_frontend_requests_total",
    "counter",
    "HTTP requests received by a frontend.",
    _PROXY,
    section="lb",
)
FRONTEND_RESPONSES = metric(
    "tierwatch_lb_frontend_responses_total",
    "counter",
    "HTTP responses sent by a frontend by status class.",
    (*_PROXY, "code"),
    section="lb",
)
BACKEND_UP = metric(
    "tierwatch_lb_backend_up",
    "gauge",
    "1 if HAProxy reports the backend UP (at least one usable server).",
    _PROXY,
    section="lb",
)
BACKEND_ACTIVE = metric(
    "tierwatch_lb_backend_active_servers",
    "gauge",
    "Active (non-backup) servers UP in a backend.",
    _PROXY,
    section="lb",
)
BACKEND_SESSIONS = metric(
    "tierwatch_lb_backend_sessions_current", "gauge", "Current sessions on a backend.", _PROXY, section="lb"
)
BACKEND_QUEUE = metric(
    "tierwatch_lb_backend_queue_current",
    "gauge",
    "Requests queued on a backend, waiting for a server.",
    _PROXY,
    section="lb",
)
BACKEND_RESPONSES = metric(
    "tierwatch_lb_backend_responses_total",
    "counter",
    "HTTP responses from a backend by status class.",
    (*_PROXY, "code"),
    section="lb",
)
BACKEND_CONNECTION_ERRORS = metric(
    "tierwatch_lb_backend_connection_errors_total",
    "counter",
    "Failed connections to a backend's servers.",
    _PROXY,
    section="lb",
)
SERVER_UP = metric(
    "tierwatch_lb_server_up",
    "gauge",
    "1 if the server is UP (also while draining), per health checks.",
    _SERVER,
    section="lb",
)
SERVER_STATUS = metric(
    "tierwatch_lb_server_status",
    "gauge",
    "Server status as HAProxy reports it: 1 for the current one (up, down, maint, drain, nolb, no_check).",
    (*_SERVER, "status"),
    section="lb",
)
SERVER_WEIGHT = metric(
    "tierwatch_lb_server_weight",
    "gauge",
    "Effective weight of the server in its backend.",
    _SERVER,
    section="lb",
)
SERVER_SESSIONS = metric(
    "tierwatch_lb_server_sessions_current", "gauge", "Current sessions on a server.", _SERVER, section="lb"
)
SERVER_QUEUE = metric(
    "tierwatch_lb_server_queue_current", "gauge", "Requests queued for a server.", _SERVER, section="lb"
)


def add_stats(observation: Observation, stat: ShowStat) -> None:
    """Turn ``show stat`` rows into samples."""
    for row in stat:
        proxy, name = row.proxy, row.name
        if row.kind == "frontend":
            observation.add(FRONTEND_SESSIONS, row.number("scur"), proxy)
            observation.add(FRONTEND_REQUESTS, row.number("req_tot"), proxy)
            for code, count in row.responses().items():
                observation.add(FRONTEND_RESPONSES, count, proxy, code)
        elif row.kind == "backend":
            observation.add(BACKEND_UP, 1.0 if row.up else 0.0, proxy)
            observation.add(BACKEND_ACTIVE, row.number("act"), proxy)
            observation.add(BACKEND_SESSIONS, row.number("scur"), proxy)
            observation.add(BACKEND_QUEUE, row.number("qcur"), proxy)
            observation.add(BACKEND_CONNECTION_ERRORS, row.number("econ"), proxy)
            for code, count in row.responses().items():
                observation.add(BACKEND_RESPONSES, count, proxy, code)
        elif row.kind == "server":
            state = row.state
            observation.add(SERVER_UP, 1.0 if row.up else 0.0, proxy, name)
            for candidate in SERVER_STATES:
                observation.add(SERVER_STATUS, 1.0 if candidate == state else 0.0, proxy, name, candidate)
            observation.add(SERVER_WEIGHT, row.number("weight"), proxy, name)
            observation.add(SERVER_SESSIONS, row.number("scur"), proxy, name)
            observation.add(SERVER_QUEUE, row.number("qcur"), proxy, name)


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run two awaitables concurrently; when one fails, cancel the other and wait until it has
    stopped before raising, so nothing still uses a connection the caller is about to reset."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return tasks[0].result(), tasks[1].result()


class HAProxyProbe(Probe):
    """Liveness from the LB's health URL, statistics from its runtime API or stats page."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        target = info.target
        self._http = HttpProbe(info)
        self._api = (
            RuntimeApi(target.stats_socket, max_bytes=target.max_stats_bytes, timeout=info.timeout)
            if target.stats_socket
            else None
        )
        self._stats_client: HttpClient | None = None

    async def probe(self, deadline: float | None = None) -> Observation:
        health, stats = await both(self._http.probe(deadline), self._stats(self.deadline(deadline)))
        if stats is not None:
            add_stats(health, stats)
            health.io_seconds = None  # the stats read is part of the probe: the monitor's timing
        return health

    async def _stats(self, deadline: float) -> ShowStat | None:
        try:
            if self._api is not None:
                return await self._api.show_stat(deadline=deadline)
            url = self.info.target.stats_url
            if url is None:
                return None
            if self._stats_client is None:
                self._stats_client = HttpClient(self.info.timeout, tls_verify(self.info.target))
            return await stats_page(
                self._stats_client, url, self.info.target.max_stats_bytes, deadline=deadline
            )
        except HAProxyError as exc:
            raise ProbeFailure(exc.reason, str(exc)) from exc
        except HttpFailure as exc:
            raise ProbeFailure(exc.reason, f"stats page: {exc}") from exc

    async def close(self) -> None:
        await self._http.close()
        if self._api is not None:
            await self._api.close()
        if self._stats_client is not None:
            client, self._stats_client = self._stats_client, None
            await client.close()
