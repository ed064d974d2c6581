"""A tiny HTTP/1.1 backend for tests and the demo: answers /health, and its behaviour can be switched
at run time through /_control (healthy, slow, hang, error, fail_requests: health checks pass but
every other request gets a 500) to play a sick app server. ``/_stats`` answers its own counters:
``requests=N connections=M`` and then, per client (the User-Agent's first word, so a bench can tell
which tool a probe came from), ``requests.<client>=N connections.<client>=M`` (a connection counts for
the client of its first request).

Run as ``python -m tierwatch_lab.stack.http_backend --port P --name N``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from .serving import serve_until_signalled

MODES = ("healthy", "slow", "hang", "error", "fail_requests")
_NOT_NAME = re.compile(rb"[^A-Za-z0-9._-]")


def client_of(head: bytes) -> str:
    """The first word of a request's User-Agent (``tierwatch``, ``Blackbox``, ...), or ``-``."""
    for line in head.split(b"\r\n")[1:]:
        if line[:11].lower() == b"user-agent:":
            word = line[11:].strip().split(b"/", 1)[0].split(b" ", 1)[0]
            return _NOT_NAME.sub(b"_", word).decode() or "-"
    return "-"


class Backend:
    """State shared by all connections: the current mode, the delay for slow mode, counters."""

    def __init__(self, name: str):
        self.name = name
        self.mode = "healthy"
        self.delay = 1.0
        self.requests = 0
        self.connections = 0
        self.requests_by_client: Counter[str] = Counter()
        self.connections_by_client: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one keep-alive connection."""
        self.connections += 1
        first = True
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) < 2:
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                status, body = await self.respond(parts[1], head, first)
                first = False
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                    f"X-Backend: {self.name}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def respond(self, target: str, head: bytes = b"", first: bool = False) -> tuple[str, bytes]:
        """Status line and body for a request path, honouring the current mode; ``head`` and ``first``
        (the connection's first request) feed the per-client counters."""
        url = urlsplit(target)
        if url.path == "/_control":
            query = parse_qs(url.query)
            mode = query.get("mode", [self.mode])[0]
            if mode not in MODES:
                return "400 Bad Request", f"mode must be one of {MODES}\n".encode()
            self.mode = mode
            self.delay = float(query.get("delay", [self.delay])[0])
            return "200 OK", f"mode={self.mode}\n".encode()
        if url.path == "/_stats":
            fields = [f"requests={self.requests}", f"connections={self.connections}"]
            fields += [f"requests.{c}={n}" for c, n in sorted(self.requests_by_client.items())]
            fields += [f"connections.{c}={n}" for c, n in sorted(self.connections_by_client.items())]
            return "200 OK", (" ".join(fields) + "\n").encode()
        self.requests += 1
        client = client_of(head)
        self.requests_by_client[client] += 1
        if first:
            self.connections_by_client[client] += 1
        if self.mode == "fail_requests" and url.path != "/health":
            return "500 Internal Server Error", b"broken\n"
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "error":
            return "503 Service Unavailable", b"unhealthy\n"
        return "200 OK", f"ok {self.name}\n".encode()


async def serve(port: int, name: str, host: str = "127.0.0.1") -> None:
    """Serve until SIGTERM/SIGINT."""
    await serve_until_signalled(Backend(name).handle, host, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="backend")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.name, args.host))


if __name__ == "__main__":
    main()
