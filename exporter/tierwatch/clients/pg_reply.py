"""A byte cap on what a PostgreSQL server sends in answer to one query.

libpq reads a whole protocol message into its buffer before psycopg sees any of it, and it accepts a
DataRow of up to 1 GB: a fake or broken server announcing a huge row makes the client buffer it all.
Worse, once a message is long libpq keeps calling recv() inside one PQconsumeInput for as long as bytes
keep arriving, so nothing on the event loop runs in between: a check made between two reads came after
up to ~200 MB had landed. libpq has no cap to set, so ``ReplyGuard`` hands the query's socket to one
watchdog thread per process (libpq's read loop runs without the GIL), which polls the kernel's count
of bytes received on it (``TCP_INFO``) every POLL_SECONDS while any query is watched and shuts the
socket down once the reply passes ``MAX_REPLY_BYTES``: the read loop and the query then fail at once
and the connection is dropped. The overshoot is what arrives in one poll interval (a few MB on
loopback). The thread sleeps on a condition while nothing is watched. A Unix-socket connection is not
watched (it reaches a local server the operator runs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

MAX_REPLY_BYTES = 1 << 20  # the probe query's one row is a few KB
POLL_SECONDS = 0.002
# while a query runs the socket's receive buffer is held small: each recv() then moves less, which
# slows a flood between two polls
RECEIVE_BUFFER_BYTES = 64 * 1024
_TCP_INFO_SIZE = 256
_BYTES_RECEIVED_OFFSET = 128  # tcpi_bytes_received (u64) in Linux's struct tcp_info


def _bytes_received(sock: socket.socket) -> int | None:
    """The kernel's count of bytes received on a TCP socket; None if it cannot be read."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(info) < _BYTES_RECEIVED_OFFSET + 8:
        return None
    received: int = struct.unpack_from("=Q", info, _BYTES_RECEIVED_OFFSET)[0]
    return received


def _own_tcp_socket(conn: psycopg.AsyncConnection[Any]) -> socket.socket | None:
    """A duplicate of the connection's socket descriptor when it is TCP (the watchdog's own: libpq may
    close its descriptor at any time and the number be reused, the duplicate still names this socket);
    None otherwise."""
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.OperationalError):
        return None
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.close()
        return None
    return sock


class _Watch:
    """One query's socket, the count it started from and its cap."""

    def __init__(self, sock: socket.socket, start: int, guard: ReplyGuard):
        self.sock = sock
        self.start = start
        self.guard = guard

    def check(self) -> None:
        """Shut the socket down when the reply passed the cap (called with the watchdog's lock held)."""
        received = _bytes_received(self.sock)
        if received is None or received - self.start <= self.guard.limit:
            return
        self.guard.tripped = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """The process's one thread that enforces every watched query's cap."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pg-reply-watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()

    def remove(self, watch: _Watch) -> None:
        with self._lock:
            self._watches.discard(watch)
            watch.sock.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._watches:
                    self._lock.wait()
                for watch in self._watches:
                    watch.check()
            time.sleep(POLL_SECONDS)


_WATCHDOG = _Watchdog()


class ReplyGuard:
    """Cuts a query's reply at ``limit`` bytes; ``tripped`` tells whether it did."""

    def __init__(self, limit: int = MAX_REPLY_BYTES):
        self.limit = limit
        self.tripped = False

    @contextlib.contextmanager
    def watching(self, conn: psycopg.AsyncConnection[Any]) -> Iterator[None]:
        """Enforce the cap on ``conn`` for the block, which sends one query and reads its reply. Enter
        it before the query is sent; it ends the watch before the block's caller may close ``conn``."""
        sock = _own_tcp_socket(conn)
        if sock is None:
            yield
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        start = _bytes_received(sock)
        if start is None:
            sock.close()
            yield
            return
        watch = _Watch(sock, start, self)
        _WATCHDOG.add(watch)
        try:
            yield
        finally:
            _WATCHDOG.remove(watch)
