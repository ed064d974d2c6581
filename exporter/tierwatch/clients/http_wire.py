"""One HTTP/1.1 connection on an asyncio Protocol, with httptools (llhttp) parsing the answers.

This is the transport under ``clients.http``: that module decides what to send and how to judge the
answer (redirects, expectations); this one writes a request and reads one bounded answer.

Bounds, whatever the peer sends:

- the status line and headers may be at most ``MAX_HEADER_BYTES`` long (counted by network read: the
  read that crosses the cap must also end the headers); more is a ``protocol`` error;
- at most ``limit`` body bytes are kept (Content-Length, chunked or until-close bodies alike); past
  that the answer is returned incomplete, reading stops and the connection is not reused;
- bytes that are not HTTP are a ``protocol`` error; a peer that trickles is ended by the caller's
  deadline (cancellation aborts the connection).

A connection is reused only after a complete answer that allows keep-alive; anything else (an error,
``Connection: close``, an unread rest of a body, bytes arriving while idle) closes it.

An answer's time is when its last bytes reached the machine, by the kernel's receive timestamp
(``SO_TIMESTAMPNS``, on Linux), not when the event loop got round to reading them: with thousands of
probes, a loop busy elsewhere for some milliseconds would otherwise add them to the latency of every
answer that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import httptools

MAX_HEADER_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})
# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; asm-generic, x86, arm, powerpc, s390, riscv), which
# Python's socket module does not name; a struct timespec follows it on a 64-bit system
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_STAMPS = sys.platform == "linux" and _TIMESPEC.size == 16
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if _STAMPS else 0
_LATEST_STAMP_AGE = 60.0  # seconds: an older receive time means the wall clock stepped meanwhile


class WireError(Exception):
    """An exchange failed; ``reason`` is protocol or error. ``before_answer`` is True when the peer
    closed the connection before sending a single byte of an answer (a kept-alive connection the
    server dropped while idle: the request may be retried on a new connection)."""

    def __init__(self, reason: str, message: str, *, before_answer: bool = False):
        super().__init__(message)
        self.reason = reason
        self.before_answer = before_answer


class Origin(NamedTuple):
    """Where a connection goes: scheme, host (no brackets) and port. A tuple: hashed in C, for the
    dictionary look-ups of every request."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@dataclass(slots=True)
class WireAnswer:
    """One answer: status, lower-cased headers (repeated ones joined by ", "), the body kept."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the whole body was read (False: the rest was left unread)
    declared: int | None  # Content-Length, if the answer declared one
    finished: float  # time.perf_counter() when its last bytes arrived (complete, or the cap reached)


def _received_at(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds * 1e-9
    return None


class StampedSocket(socket.socket):
    """A TCP socket whose reads keep the kernel's receive time (Unix time) of the bytes they return in
    ``received_at`` (None when the kernel gave none). The event loop's transport reads through
    ``recv`` (``recv_into`` under TLS)."""

    __slots__ = ("received_at",)

    def __init__(self, family: int = -1, kind: int = -1, proto: int = -1) -> None:
        super().__init__(family, kind, proto)
        self.received_at: float | None = None
        if _STAMPS:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not _STAMPS:
            return super().recv(bufsize, flags)
        data, ancillary, _, _ = self.recvmsg(bufsize, _ANCILLARY, flags)
        self.received_at = _received_at(ancillary)
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if not _STAMPS:
            return super().recv_into(buffer, nbytes, flags)
        view = memoryview(buffer).cast("B")
        size, ancillary, _, _ = self.recvmsg_into([view[:nbytes] if nbytes else view], _ANCILLARY, flags)
        self.received_at = _received_at(ancillary)
        return size


async def connect(host: str, port: int) -> StampedSocket:
    """A connected non-blocking ``StampedSocket`` to ``host``:``port``: each address in turn, as
    ``loop.create_connection`` does (a numeric host is not looked up)."""
    loop = asyncio.get_running_loop()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned an empty list")
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = StampedSocket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if all(str(exc) == str(errors[0]) for exc in errors):
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


class Connection(asyncio.Protocol):
    """One kept-alive connection; one exchange at a time (``exchange``)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._sock: StampedSocket | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._closed: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[WireAnswer] | None = None
        self.reusable = False
        self._cert_expiry: float | None = None
        self._cert_read = False
        self._reset(0, True)

    @classmethod
    async def open(cls, origin: Origin, tls: ssl.SSLContext | None) -> Connection:
        """Connect (and handshake) to ``origin``; the caller's deadline bounds the wait."""
        loop = asyncio.get_running_loop()
        connection = cls()
        connection._closed = loop.create_future()
        sock = await connect(origin.host, origin.port)
        try:
            await loop.create_connection(
                lambda: connection,
                sock=sock,
                ssl=tls if origin.tls else None,
                server_hostname=origin.host if origin.tls else None,
            )
        except BaseException:
            sock.close()
            raise
        connection._sock = sock
        return connection

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._closed.get_loop() if self._closed is not None else None

    def on_closed(self, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(self)`` once the socket is closed."""
        assert self._closed is not None
        self._closed.add_done_callback(lambda _: callback(self))

    @property
    def is_closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    async def exchange(self, request: bytes, limit: int, read_over_limit: bool) -> WireAnswer:
        """Write ``request`` and read its answer, keeping at most ``limit`` body bytes. With
        ``read_over_limit`` false, a body declared longer than ``limit`` is not read at all."""
        if self.is_closed:
            raise WireError("protocol", "connection closed", before_answer=True)
        assert self._transport is not None and self._closed is not None
        self._reset(limit, read_over_limit)
        self.reusable = False
        waiter = self._waiter = self._closed.get_loop().create_future()
        self._transport.write(request)
        try:
            return await waiter
        finally:
            self._waiter = None

    def cert_expiry(self) -> float | None:
        """The peer certificate's notAfter (Unix time) on a TLS connection, read once per session."""
        if not self._cert_read and self._transport is not None:
            self._cert_read = True
            self._cert_expiry = peer_cert_expiry(self._transport.get_extra_info("ssl_object"))
        return self._cert_expiry

    def abort(self) -> None:
        """Drop the connection now (nothing is left to send)."""
        self.reusable = False
        if self._transport is not None:
            try:
                self._transport.abort()
            except RuntimeError:  # its event loop is closed: the socket closes with it
                pass

    async def wait_closed(self) -> None:
        """Return once the socket is closed (after ``abort``)."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes nobody asked for: the connection is not clean
            self.abort()
            return
        self._received = True
        if not self._head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(WireError("protocol", "the server switched protocols"))
            return
        except httptools.HttpParserError:
            self._fail(WireError("protocol", "not a valid HTTP/1.1 answer"))
            return
        if not self._head_done and self._head_bytes > MAX_HEADER_BYTES:
            self._fail(WireError("protocol", f"answer headers longer than {MAX_HEADER_BYTES} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost finishes or fails the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._head_done and self._until_close and exc is None:
            self._finish(True, stamped=False)  # a body delimited by the end of the connection
            return
        if isinstance(exc, OSError):
            waiter.set_exception(WireError("error", type(exc).__name__, before_answer=not self._received))
            return
        message = "connection closed before a complete answer" if self._received else "connection closed"
        waiter.set_exception(WireError("protocol", message, before_answer=not self._received))

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an informational answer (100 Continue): the real one follows
            self._informational = True
            self._headers = []
            return
        self._status = status
        headers: dict[str, str] = {}
        for raw_name, raw_value in self._headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self._header_map = headers
        self._head_done = True
        try:
            self._declared = int(headers["content-length"]) if "content-length" in headers else None
        except ValueError:
            self._declared = None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._until_close = self._declared is None and not chunked and status not in _NO_BODY
        if not self._read_over_limit and self._declared is not None and self._declared > self._limit:
            self._finish(False)

    def on_body(self, body: bytes) -> None:
        if self._done:
            return
        room = self._limit - len(self._body)
        if len(body) > room:
            self._body += body[:room]
            self._finish(False)
        else:
            self._body += body

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self._done:
            self._finish(True)

    # -- internals

    def _reset(self, limit: int, read_over_limit: bool) -> None:
        self._limit = limit
        self._read_over_limit = read_over_limit
        self._received = False
        self._head_bytes = 0
        self._head_done = False
        self._informational = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_map: dict[str, str] = {}
        self._status = 0
        self._declared: int | None = None
        self._until_close = False
        self._body = bytearray()
        self._done = False

    def _finish(self, complete: bool, stamped: bool = True) -> None:
        """End the exchange; ``stamped``: called from the read that brought the answer's last bytes,
        whose receive time is then the answer's."""
        self._done = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        finished = time.perf_counter()
        received = self._sock.received_at if stamped and self._sock is not None else None
        if received is not None:
            late = time.time() - received  # how long the answer waited for the loop to read it
            if 0.0 < late < _LATEST_STAMP_AGE:
                finished -= late
        self.reusable = complete and self._parser.should_keep_alive() and not self.is_closed
        if not complete and self._transport is not None:
            self._transport.pause_reading()  # the rest is not read; the caller drops the connection
        waiter.set_result(
            WireAnswer(
                self._status,
                self._header_map,
                bytes(self._body),
                complete,
                self._declared,
                finished,
            )
        )

    def _fail(self, error: WireError) -> None:
        self._done = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self.abort()


def peer_cert_expiry(ssl_object: ssl.SSLObject | None) -> float | None:
    """The notAfter of the peer certificate of a TLS session as a Unix time (None without TLS)."""
    if ssl_object is None:
        return None
    peer = ssl_object.getpeercert()
    if peer and "notAfter" in peer:
        return float(ssl.cert_time_to_seconds(str(peer["notAfter"])))
    der = ssl_object.getpeercert(binary_form=True)  # not verified: the dict form is empty
    if not der:
        return None
    from cryptography import x509  # only needed when verification is off

    return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()
