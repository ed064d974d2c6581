"""HAProxy probe: the LB's own health URL for liveness, plus proxy and server states, sessions, queues
and response-code counters from its runtime API (``stats_socket``) or CSV stats page (``stats_url``).

The runtime API connection is kept open in interactive ("prompt") mode, so steady-state probing opens
no new connection to the LB.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator

import httpx

from ..metric_catalog import metric
from .base import Observation, Probe, ProbeFailure, TargetInfo
from .http import HttpProbe, make_client, tls_verify

_PROXY = ("proxy",)
_SERVER = ("proxy", "server")
SERVER_STATUSES = ("up", "down", "maint", "drain", "nolb", "no_check")
RESPONSE_CODES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

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

PROMPT = b"\n> "


def server_status(raw: str) -> str:
    """Normalise HAProxy's status column ('UP 1/2', 'MAINT (via x)', 'no check') to SERVER_STATUSES."""
    word = raw.strip().lower()
    if word.startswith("no check"):
        return "no_check"
    first = word.split(" ", 1)[0]
    return first if first in SERVER_STATUSES else "down"


def _num(row: dict[str, str], key: str) -> float:
    value = row.get(key) or ""
    try:
        return float(value)
    except ValueError:
        return 0.0


def parse_show_stat(text: str) -> Iterator[dict[str, str]]:
    """Rows of ``show stat`` CSV output as dicts keyed by column name."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise ProbeFailure("protocol", "stats output has no CSV header")
    header = lines[0][2:].split(",")
    for values in csv.reader(lines[1:]):
        yield dict(zip(header, values, strict=False))


def add_stats(observation: Observation, text: str) -> None:
    """Turn ``show stat`` CSV into samples."""
    for row in parse_show_stat(text):
        proxy, name, kind = row.get("pxname", ""), row.get("svname", ""), row.get("type", "")
        if kind == "0":
            observation.add(FRONTEND_SESSIONS, _num(row, "scur"), proxy)
            observation.add(FRONTEND_REQUESTS, _num(row, "req_tot"), proxy)
            for code in RESPONSE_CODES:
                observation.add(FRONTEND_RESPONSES, _num(row, f"hrsp_{code}"), proxy, code)
        elif kind == "1":
            observation.add(BACKEND_UP, 1.0 if row.get("status", "").startswith("UP") else 0.0, proxy)
            observation.add(BACKEND_ACTIVE, _num(row, "act"), proxy)
            observation.add(BACKEND_SESSIONS, _num(row, "scur"), proxy)
            observation.add(BACKEND_QUEUE, _num(row, "qcur"), proxy)
            observation.add(BACKEND_CONNECTION_ERRORS, _num(row, "econ"), proxy)
            for code in RESPONSE_CODES:
                observation.add(BACKEND_RESPONSES, _num(row, f"hrsp_{code}"), proxy, code)
        elif kind == "2":
            status = server_status(row.get("status", ""))
            observation.add(SERVER_UP, 1.0 if status in ("up", "drain", "no_check") else 0.0, proxy, name)
            for candidate in SERVER_STATUSES:
                observation.add(SERVER_STATUS, 1.0 if candidate == status else 0.0, proxy, name, candidate)
            observation.add(SERVER_WEIGHT, _num(row, "weight"), proxy, name)
            observation.add(SERVER_SESSIONS, _num(row, "scur"), proxy, name)
            observation.add(SERVER_QUEUE, _num(row, "qcur"), proxy, name)


class RuntimeApi:
    """A kept-open, interactive connection to HAProxy's runtime API on a unix socket."""

    def __init__(self, path: str):
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def command(self, line: str) -> str:
        """Send one command and return its output (without the prompt)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 24)
            self._writer.write(b"prompt\n")
            await self._reader.readuntil(b"> ")
        assert self._reader is not None
        self._writer.write(line.encode() + b"\n")
        data = await self._reader.readuntil(PROMPT)
        return data[: -len(PROMPT)].decode("utf-8", "replace")

    async def close(self) -> None:
        """Close the connection (the next command reconnects)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class HAProxyProbe(Probe):
    """Liveness from the LB's health URL, statistics from its runtime API or stats page."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        self._http = HttpProbe(info)
        self._api = RuntimeApi(info.target.stats_socket) if info.target.stats_socket else None
        self._stats_client: httpx.AsyncClient | None = None

    async def probe(self) -> Observation:
        health, stats = await asyncio.gather(self._http.probe(), self._stats())
        if stats is not None:
            add_stats(health, stats)
        return health

    async def _stats(self) -> str | None:
        if self._api is not None:
            return await self._api.command("show stat")
        url = self.info.target.stats_url
        if url is None:
            return None
        if self._stats_client is None:
            self._stats_client = make_client(self.info.timeout, tls_verify(self.info.target))
        response = await self._stats_client.get(url.rstrip("/") + "/;csv")
        if response.status_code != 200:
            raise ProbeFailure("protocol", f"stats page answered {response.status_code}")
        return response.text

    async def close(self) -> None:
        await self._http.close()
        if self._api is not None:
            await self._api.close()
        if self._stats_client is not None:
            client, self._stats_client = self._stats_client, None
            await client.aclose()
