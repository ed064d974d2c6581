"""A byte cap on what a PostgreSQL server sends in answer to one query.

libpq reads a whole protocol message into its buffer before psycopg sees any of it, and it accepts a
DataRow of up to 1 GB: a fake or broken server announcing a huge row makes the client buffer it all
(~0.5 GB within a 2 s probe deadline on loopback). libpq has no cap to set, so ``ReplyGuard`` watches
the kernel's count of bytes received on the connection's TCP socket (``TCP_INFO``) while a query runs
and shuts the socket down once the query's reply passes ``MAX_REPLY_BYTES``: the query then fails at
once and the connection is dropped. The overshoot is what arrives in one poll interval. A Unix-socket
connection is not watched (it reaches a local server the operator runs).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import psycopg

from .postgres import shutdown_socket

MAX_REPLY_BYTES = 1 << 20  # the probe query's one row is a few KB
POLL_SECONDS = 0.002
# while a query runs the socket's receive buffer is held small, so that what can arrive between two
# polls stays small too (the kernel's autotuned buffer let a hostile server land ~200 MB in one)
RECEIVE_BUFFER_BYTES = 256 * 1024
_TCP_INFO_SIZE = 256
_BYTES_RECEIVED_OFFSET = 128  # tcpi_bytes_received (u64) in Linux's struct tcp_info


def _bytes_received(conn: psycopg.AsyncConnection[Any], receive_buffer: int | None = None) -> int | None:
    """The kernel's count of bytes received on the connection's TCP socket (first setting its receive
    buffer to ``receive_buffer`` bytes, when given); None if not TCP."""
    try:
        sock = socket.socket(fileno=conn.pgconn.socket)
    except (OSError, psycopg.OperationalError):
        return None
    try:  # borrowed, not owned: libpq keeps the descriptor (detached below, never closed here)
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    finally:
        sock.detach()
    if len(info) < _BYTES_RECEIVED_OFFSET + 8:
        return None
    received: int = struct.unpack_from("=Q", info, _BYTES_RECEIVED_OFFSET)[0]
    return received


class ReplyGuard:
    """Cuts a query's reply at ``limit`` bytes; ``tripped`` tells whether it did."""

    def __init__(self, limit: int = MAX_REPLY_BYTES):
        self.limit = limit
        self.tripped = False

    async def watch(self, conn: psycopg.AsyncConnection[Any], query: asyncio.Future[Any]) -> None:
        """Poll the socket's received bytes until ``query`` is done; shut the socket down when the
        reply passes the cap. Returns at once on a connection that is not TCP. Holds no descriptor
        between polls, so cancelling it leaks nothing."""
        start = _bytes_received(conn, RECEIVE_BUFFER_BYTES)
        if start is None:
            return
        while not query.done():
            await asyncio.sleep(POLL_SECONDS)
            if query.done() or conn.closed:
                return
            received = _bytes_received(conn)
            if received is not None and received - start > self.limit:
                self.tripped = True
                shutdown_socket(conn)
                return
