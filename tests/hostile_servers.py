"""Hostile targets on 127.0.0.1 for tests: servers that answer Redis or HTTP clients badly.

Each kind misbehaves the same way on every connection:

- ``silent``: accepts, reads, never answers.
- ``trickle_redis`` / ``trickle_http``: starts a reply, then sends one byte every 100 ms, forever.
- ``garbage``: answers with bytes that are no protocol at all, then closes.
- ``huge_bulk``: a Redis bulk string announced as 2 GB (``$2000000000``), then bytes as fast as read.
- ``huge_array`` / ``huge_map``: a Redis array / map announced with 2^31 - 1 elements
  (``*2147483647``, ``%2147483647``), then minimal elements (``+\\r\\n``) as fast as read.
- ``partial_array``: a Redis array of 300,000 elements (it would fit in 1 MiB), of which it sends
  1,000, then nothing.
- ``endless_body``: an HTTP 200 without a length, then a body as fast as it is read, forever.
- ``huge_length``: an HTTP 200 announcing a 2 GB Content-Length, then bytes as fast as read.
- ``accept_close``: accepts and closes at once.
- ``pg_huge_row``: a PostgreSQL server that completes the start-up, then answers any query with a row
  announced as 500 MB, then bytes as fast as read.
- ``blackhole``: a listening socket whose accept queue is full, so new connections never complete.

``HostileServers`` runs them on an event loop in a thread; ``hostile_process`` (or
``python tests/hostile_servers.py KIND...``) runs them in their own process, so their CPU and memory
are not the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator

CHUNK = b"a" * 65536
MINIMAL_ELEMENTS = b"+\r\n" * 21845  # the smallest RESP element, 64 KiB of them
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
KINDS = (
    "silent",
    "trickle_redis",
    "trickle_http",
    "garbage",
    "huge_bulk",
    "huge_array",
    "huge_map",
    "partial_array",
    "endless_body",
    "huge_length",
    "accept_close",
    "pg_huge_row",
    "blackhole",
)


async def _request(reader: asyncio.StreamReader) -> bool:
    """Wait for the client's first bytes (discarded); False if it closed."""
    return bool(await reader.read(4096))


async def _drain_forever(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _drain_forever(reader)


def _trickle(prelude: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await _request(reader):
            return
        writer.write(prelude)
        while True:
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"x")

    return handle


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if await _request(reader):
        writer.write(b"\x00\xff\x13garbage that is no protocol\r\n" * 4)
        await writer.drain()


def _endless(prelude: bytes, chunk: bytes = CHUNK) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await _request(reader):
            return
        writer.write(prelude)
        while True:
            await writer.drain()
            writer.write(chunk)

    return handle


def _stall(reply: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await _request(reader):
            return
        writer.write(reply)
        await _drain_forever(reader)

    return handle


async def _accept_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return


def _pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", 4 + len(body)) + body


async def _pg_huge_row(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:  # the start-up message, after refusing SSL and GSS encryption requests
        length = struct.unpack("!I", await reader.readexactly(4))[0]
        body = await reader.readexactly(length - 4)
        if struct.unpack("!I", body[:4])[0] not in (80877103, 80877104):
            break
        writer.write(b"N")
    writer.write(_pg_message(b"R", struct.pack("!I", 0)))  # AuthenticationOk
    for key, value in ((b"server_version", b"15.4"), (b"client_encoding", b"UTF8")):
        writer.write(_pg_message(b"S", key + b"\0" + value + b"\0"))
    writer.write(_pg_message(b"Z", b"I"))
    while True:
        kind = await reader.readexactly(1)
        length = struct.unpack("!I", await reader.readexactly(4))[0]
        await reader.readexactly(length - 4)
        if kind in (b"Q", b"S"):  # a simple query, or the Sync that ends an extended one
            break
    column = b"x\0" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    writer.write(_pg_message(b"T", struct.pack("!h", 1) + column))
    writer.write(b"D" + struct.pack("!IhI", 500_000_010, 1, 500_000_000))
    while True:
        await writer.drain()
        writer.write(CHUNK)


HANDLERS: dict[str, Handler] = {
    "silent": _silent,
    "trickle_redis": _trickle(b"+OK"),
    "trickle_http": _trickle(b"HTTP/1.1 200 OK\r\nX-Slow: "),
    "garbage": _garbage,
    "huge_bulk": _endless(b"$2000000000\r\n"),
    "huge_array": _endless(b"*2147483647\r\n", MINIMAL_ELEMENTS),
    "huge_map": _endless(b"%2147483647\r\n", MINIMAL_ELEMENTS),
    "partial_array": _stall(b"*300000\r\n" + b"+\r\n" * 1000),
    "endless_body": _endless(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"),
    "huge_length": _endless(b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\n"),
    "accept_close": _accept_close,
    "pg_huge_row": _pg_huge_row,
}


def _guarded(handler: Handler) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (OSError, EOFError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return handle


def blackhole_socket() -> list[socket.socket]:
    """A listening socket that never accepts, with its accept queue filled, so that further
    connections are never established (Linux drops their SYN while the queue is full). The listener
    comes first; keep every socket open as long as the blackhole is needed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(2):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    return [listener, *fillers]


class HostileServers:
    """Hostile servers of the given kinds on an event loop in a daemon thread; ``ports[kind]``."""

    def __init__(self, kinds: tuple[str, ...] = KINDS):
        self.kinds = kinds
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="hostile")
        self._servers: list[asyncio.Server] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> HostileServers:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        for kind in self.kinds:
            if kind == "blackhole":
                sockets = blackhole_socket()
                self._sockets.extend(sockets)
                self.ports[kind] = sockets[0].getsockname()[1]
                continue
            server = await asyncio.start_server(_guarded(HANDLERS[kind]), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports[kind] = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        for sock in self._sockets:
            sock.close()


@contextlib.contextmanager
def hostile_process(kinds: tuple[str, ...] = KINDS) -> Iterator[dict[str, int]]:
    """The hostile servers in a child process (their CPU and memory are not the caller's): kind -> port.
    They stop when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *kinds], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        ports: dict[str, int] = {}
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            kind, port = line.split()
            ports[kind] = int(port)
        if set(ports) != set(kinds):
            raise RuntimeError(f"hostile servers did not start: {sorted(set(kinds) - set(ports))}")
        yield ports
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(kinds: list[str]) -> None:
    """Run the given kinds until stdin closes; print ``KIND PORT`` per server, then ``ready``."""
    with HostileServers(tuple(kinds) or KINDS) as servers:
        for kind, port in servers.ports.items():
            print(kind, port)
        print("ready", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
