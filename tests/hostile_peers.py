"""Hostile peers for the bounded-read tests: an HTTP server whose paths misbehave (endless bodies, a
huge Content-Length, garbage instead of HTTP, redirect loops), run as its own process so the test
process's memory measures only the client side, and a unix socket that answers the HAProxy runtime
API with garbage (imported explicitly: ``from hostile_peers import ...``).

Run as ``python tests/hostile_peers.py PORT`` to serve HTTP on 127.0.0.1:PORT.
"""

from __future__ import annotations

import asyncio
import socketserver
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHUNK = b"x" * 65536
HUGE = 10 * 1024**3  # the 10 GB Content-Length of the issue


@dataclass
class HostileHttp:
    """The started hostile HTTP server; ``url(path)`` names one of its behaviours."""

    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_hostile_http(stack: object) -> HostileHttp:
    """Start the hostile HTTP server as a process of ``stack`` and wait until it listens."""
    from tierwatch_lab.stack import Stack, free_port, wait_for
    from tierwatch_lab.stack.ports import port_open

    assert isinstance(stack, Stack)
    port = free_port()
    proc = stack.spawn("hostile-http", [sys.executable, str(Path(__file__).resolve()), str(port)])
    wait_for(lambda: proc.check_alive() or port_open(port), 10, "hostile HTTP server")
    return HostileHttp(port)


async def _respond(path: str, writer: asyncio.StreamWriter) -> bool:
    """Write the answer for ``path``; returns True to keep the connection open for the next request."""
    if path == "/ok":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhealthy\n")
        return True
    if path == "/big-ok":  # a 1 MiB health page that says "healthy" at its start
        body = b"healthy\n" + b"." * (1024 * 1024 - 8)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True
    if path == "/loop":
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
        return True
    if path.startswith("/hop/"):  # /hop/N redirects to /hop/N+1, forever, never the same URL twice
        following = int(path.rsplit("/", 1)[1]) + 1
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /hop/%d\r\nContent-Length: 0\r\n\r\n" % following)
        return True
    if path == "/redirect":
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n\r\n")
        return True
    if path == "/redirect-endless":  # a redirect whose own body never ends
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nTransfer-Encoding: chunked\r\n\r\n")
        await _endless_chunks(writer)
        return False
    if path == "/endless":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await _endless_chunks(writer)
        return False
    if path == "/huge":  # a 10 GB body, sent as fast as the reader takes it
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
        while True:
            writer.write(CHUNK)
            await writer.drain()
    if path == "/trickle":  # a 10 GB body, a few bytes at a time
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % HUGE)
        while True:
            writer.write(b"healthy\n")
            await writer.drain()
            await asyncio.sleep(0.05)
    if path == "/garbage":  # no status line, no line break: bytes forever
        while True:
            writer.write(CHUNK)
            await writer.drain()
    if path == "/endless-headers":
        writer.write(b"HTTP/1.1 200 OK\r\n")
        while True:
            writer.write(b"X-Filler: " + b"y" * 1000 + b"\r\n")
            await writer.drain()
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    return True


async def _endless_chunks(writer: asyncio.StreamWriter) -> None:
    while True:
        writer.write(b"10000\r\n" + CHUNK + b"\r\n")
        await writer.drain()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1].decode("latin-1")
            path = path.removesuffix("/;csv")  # a stats_url gets HAProxy's CSV suffix
            if not await _respond(path, writer):
                return
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, IndexError):
        pass
    finally:
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class _GarbageHandler(socketserver.StreamRequestHandler):
    """Speaks the runtime API's prompt protocol, but answers every command with non-CSV text."""

    def handle(self) -> None:
        for line in self.rfile:
            if line.strip() == b"prompt":
                self.wfile.write(b"\n> ")
            else:
                self.wfile.write(b"this is not,the stats,you are looking for\n\n> ")
            self.wfile.flush()


@contextmanager
def garbage_runtime_api(path: Path) -> Iterator[Path]:
    """A unix socket at ``path`` answering every runtime API command with garbage, while in the block."""
    server = socketserver.ThreadingUnixStreamServer(str(path), _GarbageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
