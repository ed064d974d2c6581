"""PostgreSQL client helpers shared by the probe and the recovery actions: error classification,
socket shutdown (end a query at once without waiting on the server), short-lived connections and
bounded statements, and the address a conninfo string names."""

from __future__ import annotations

import asyncio
import math
import os
import socket
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..config import Secret, TargetConfig
from .addresses import DEFAULT_PORTS, Address, normal_host

AUTH_SQLSTATES = frozenset({"28P01", "28000"})
AUTH_PHRASES = ("password authentication failed", "no password supplied", "pg_hba.conf", 'role "')
REFUSED_PHRASES = ("connection refused", "no such file or directory", "could not connect")
TIMEOUT_PHRASES = ("timeout expired", "timed out")
ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, OSError, TimeoutError)
ABORT_WAIT = 1.0  # seconds a query task gets to end after its socket was shut down


def classify_pg_error(exc: psycopg.Error) -> str:
    """Map a psycopg error to a failure reason (auth, refused, timeout, error)."""
    if exc.sqlstate in AUTH_SQLSTATES or isinstance(exc, psycopg.errors.InvalidAuthorizationSpecification):
        return "auth"
    if isinstance(exc, psycopg.errors.QueryCanceled | psycopg.errors.ConnectionTimeout):
        return "timeout"
    text = str(exc).lower()
    if any(phrase in text for phrase in TIMEOUT_PHRASES):
        return "timeout"
    if isinstance(exc, psycopg.OperationalError):
        if any(phrase in text for phrase in AUTH_PHRASES):
            return "auth"
        if any(phrase in text for phrase in REFUSED_PHRASES):
            return "refused"
    return "error"


def silent(exc: BaseException) -> bool:
    """True if ``exc`` means the server gave no answer at all (refused, timed out); a refused
    password or "starting up" is an answer."""
    if isinstance(exc, TimeoutError | OSError):
        return True
    return isinstance(exc, psycopg.Error) and classify_pg_error(exc) in ("refused", "timeout")


def problem(exc: BaseException) -> str:
    """A secret-free description of an error (class and SQLSTATE, never the message)."""
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' ({state})' if state else ''}"


def shutdown_socket(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut down the connection's socket (not close its fd: libpq still owns that) so any read
    pending on it returns at once."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    with sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


async def abort(conn: psycopg.AsyncConnection[Any], task: asyncio.Future[Any]) -> None:
    """End an in-flight statement without waiting on the server: shut the socket down so ``task``
    fails at once (cancel it if it still runs after ABORT_WAIT); the connection is then unusable."""
    if not task.done():
        shutdown_socket(conn)
        done, _ = await asyncio.wait({task}, timeout=ABORT_WAIT)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=ABORT_WAIT)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the statement's error is not news


def statement_seconds(timeout: float) -> int:
    """Whole seconds for a connect or a short statement: libpq's connect timeout has a 2 s minimum."""
    return max(2, math.ceil(timeout))


async def connect(
    target: TargetConfig,
    password: Secret | None,
    timeout: float,
    *,
    application_name: str,
    user: str | None = None,
) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection to one target with a short connect timeout (libpq's minimum is 2 s)."""
    seconds = statement_seconds(timeout)
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": seconds,
        "application_name": application_name,
    }
    if user:
        kwargs["user"] = user
    if password is not None:
        kwargs["password"] = password.reveal()
    return await asyncio.wait_for(psycopg.AsyncConnection.connect(target.url, **kwargs), seconds + 1)


async def fetch(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None, *, timeout: float
) -> list[tuple[Any, ...]]:
    """Run one statement within ``timeout`` seconds; its rows (empty if none). On the deadline the
    socket is shut down (a frozen server is never waited on) and TimeoutError raised."""

    async def run() -> list[tuple[Any, ...]]:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []

    task = asyncio.ensure_future(run())
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        await abort(conn, task)
        raise
    if not done:
        await abort(conn, task)
        raise TimeoutError(f"no result within {timeout:g}s")
    return task.result()


def conninfo_address(conninfo: str) -> Address | None:
    """(host, port) named by a conninfo string or URL, host normalised; None if it names no single
    TCP host (a unix socket directory, several hosts, or nothing)."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return None
    host = str(params.get("hostaddr") or params.get("host") or "")
    port = str(params.get("port") or DEFAULT_PORTS["postgresql"])
    if not host or host.startswith("/") or "," in host or not port.isdigit():
        return None
    return normal_host(host), int(port)
