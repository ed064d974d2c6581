"""HAProxy: the runtime API on its unix socket, the CSV stats page, and one typed view of ``show stat``.

Both the LB probe and the recovery actions (service discovery, traffic shifting) use this module, so
there is one parser, one list of response codes and one notion of a server's state. Anything HAProxy
(or whatever listens on the socket) answers that is not what was asked raises ``HAProxyError``;
socket problems stay ``OSError`` (``TimeoutError`` included).
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .http import HttpClient, HttpFailure, HttpRules

RESPONSE_CODES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
SERVER_STATES = ("up", "down", "maint", "drain", "nolb", "no_check")
KINDS = {"0": "frontend", "1": "backend", "2": "server", "3": "listener"}
# ``show stat`` is one CSV row (~100 columns, 0.5-1 KB) per frontend, backend and server: 4 MiB holds
# several thousand of them, far more than one LB carries, and is all a hostile peer can make us hold.
DEFAULT_MAX_STATS_BYTES = 4 * 1024 * 1024
DEFAULT_COMMAND_TIMEOUT = 5.0
PROMPT = b"\n> "


class HAProxyError(Exception):
    """The runtime API or stats page answered something unusable (``reason`` is for probes)."""

    reason = "protocol"


def server_state(raw: str) -> str:
    """Normalise HAProxy's status column ('UP 1/2', 'MAINT (via x)', 'no check') to SERVER_STATES."""
    word = raw.strip().lower()
    if word.startswith("no check"):
        return "no_check"
    first = word.split(" ", 1)[0]
    return first if first in SERVER_STATES else "down"


@dataclass(frozen=True)
class StatRow:
    """One row of ``show stat``: a frontend, backend, server or listener of proxy ``proxy``."""

    proxy: str
    name: str
    kind: str  # frontend, backend, server, listener (or the raw type for an unknown one)
    status: str  # as HAProxy writes it ("UP", "DOWN 1/2", "MAINT (via ...)")
    columns: Mapping[str, str]

    def __getitem__(self, column: str) -> str:
        """The raw value of a column by its CSV name (``row["scur"]``)."""
        return self.columns[column]

    def get(self, column: str, default: str = "") -> str:
        return self.columns.get(column, default)

    def number(self, column: str) -> float:
        """A numeric column; 0 when empty or absent (HAProxy leaves unknown counters empty)."""
        try:
            return float(self.columns.get(column) or 0)
        except ValueError:
            return 0.0

    @property
    def state(self) -> str:
        """The status normalised to SERVER_STATES."""
        return server_state(self.status)

    @property
    def up(self) -> bool:
        """A backend: UP (at least one usable server); a server: UP per its checks (or draining)."""
        if self.kind == "server":
            return self.state in ("up", "drain", "no_check")
        return self.status.startswith("UP")

    def responses(self) -> dict[str, float]:
        """HTTP responses by status class (RESPONSE_CODES)."""
        return {code: self.number(f"hrsp_{code}") for code in RESPONSE_CODES}


@dataclass(frozen=True)
class Server:
    """A server of a backend, as one LB sees it."""

    backend: str
    name: str
    status: str
    state: str
    weight: float


@dataclass(frozen=True)
class ShowStat:
    """The parsed output of ``show stat`` (iterating yields its rows)."""

    rows: tuple[StatRow, ...]

    def __iter__(self) -> Iterator[StatRow]:
        return iter(self.rows)

    def backend(self, name: str) -> StatRow | None:
        """The backend row of proxy ``name``, if the LB has that backend."""
        return next((r for r in self.rows if r.proxy == name and r.kind == "backend"), None)

    def servers(self, backend: str) -> dict[str, Server]:
        """The servers of ``backend`` by name (empty when the LB does not have it)."""
        return {
            r.name: Server(backend, r.name, r.status, r.state, r.number("weight"))
            for r in self.rows
            if r.proxy == backend and r.kind == "server"
        }


def parse_show_stat(text: str) -> ShowStat:
    """Parse ``show stat`` CSV (the runtime API's or the stats page's ``;csv``); HAProxyError if it
    is not that."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# "):
        raise HAProxyError("stats output has no CSV header")
    header = lines[0][2:].split(",")
    if not {"pxname", "svname", "type"} <= set(header):
        raise HAProxyError("stats header lacks pxname, svname or type")
    rows = []
    try:
        for values in csv.reader(lines[1:]):
            columns = dict(zip(header, values, strict=False))
            kind = columns.get("type", "")
            rows.append(
                StatRow(
                    proxy=columns.get("pxname", ""),
                    name=columns.get("svname", ""),
                    kind=KINDS.get(kind, kind),
                    status=columns.get("status", ""),
                    columns=columns,
                )
            )
    except csv.Error:
        raise HAProxyError("stats output is not valid CSV") from None
    return ShowStat(tuple(rows))


class RuntimeApi:
    """A kept-open, interactive ("prompt" mode) connection to HAProxy's runtime API on a unix socket.

    One command at a time; an answer may be at most ``max_bytes`` long and must come by the caller's
    deadline, or within ``timeout`` seconds. After any failure the connection is closed (the next
    command reconnects); a kept-open connection HAProxy closed in the meantime (its ``stats
    timeout``) is reopened once.
    """

    def __init__(
        self,
        path: str,
        *,
        max_bytes: int = DEFAULT_MAX_STATS_BYTES,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def command(self, line: str, *, deadline: float | None = None) -> str:
        """Send one command and return its output (without the prompt), by ``deadline`` (an instant of
        the event loop's clock), else within ``timeout`` from now."""
        if "\n" in line or "\r" in line:
            raise ValueError("a runtime API command is one line")
        when = deadline if deadline is not None else asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(when):
                reused = self._writer is not None
                try:
                    return await self._exchange(line)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    await self.close()
                    if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                        raise
                    return await self._exchange(line)  # the kept-open connection had gone stale
        except asyncio.LimitOverrunError:
            await self.close()
            raise HAProxyError(f"runtime API answer larger than {self.max_bytes} bytes") from None
        except asyncio.IncompleteReadError:
            await self.close()
            raise HAProxyError("runtime API closed the connection mid-answer") from None
        except BaseException:
            await self.close()
            raise

    async def show_stat(self, *, deadline: float | None = None) -> ShowStat:
        """``show stat``, parsed."""
        return parse_show_stat(await self.command("show stat", deadline=deadline))

    async def close(self) -> None:
        """Close the connection (the next command reconnects)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _exchange(self, line: str) -> str:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=self.max_bytes)
            self._writer.write(b"prompt\n")
            await self._reader.readuntil(b"> ")
        assert self._reader is not None
        self._writer.write(line.encode() + b"\n")
        await self._writer.drain()
        data = await self._reader.readuntil(PROMPT)
        return data[: -len(PROMPT)].decode("utf-8", "replace")


async def runtime_command(socket_path: str, line: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> str:
    """Run one runtime API command over a fresh connection and return its output."""
    api = RuntimeApi(socket_path, timeout=timeout)
    try:
        return await api.command(line)
    finally:
        await api.close()


async def stats_page(
    client: HttpClient, url: str, max_bytes: int, *, deadline: float | None = None
) -> ShowStat:
    """The CSV stats page at ``url`` (``/;csv`` is appended), parsed; at most ``max_bytes`` are read.

    Raises HttpFailure for HTTP problems (a page over the cap included), HAProxyError if it is not CSV.
    """
    rules = HttpRules(accept=frozenset({200}), max_body_bytes=max_bytes, need_whole_body=True)
    answer = await client.get(url.rstrip("/") + "/;csv", rules, deadline=deadline)
    if answer.status != 200:
        raise HttpFailure("protocol", f"answered {answer.status}")
    return parse_show_stat(answer.text)
