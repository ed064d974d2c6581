"""A TCP forwarder that plays a virtual IP on one machine: it listens on the VIP port and forwards
each new connection to whichever LB is currently "holding" the address.

It is the documented fallback for keepalived/VRRP where network namespaces cannot be used (not root).
Run as ``python -m tierwatch_lab.stack.tcp_forwarder --port P --backend 8081 --backend 8082``: it holds the
first backend that accepts connections, in order, like VRRP priorities.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .serving import serve_until_signalled


class Forwarder:
    """Forwards to the first backend port (by priority) that accepts a connection."""

    def __init__(self, backends: list[int], host: str = "127.0.0.1"):
        self.backends = backends
        self.host = host

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Connect to the highest-priority live backend and pipe bytes both ways."""
        upstream = None
        for port in self.backends:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(self.host, port), 1.0)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, open_: asyncio.Event | None = None
) -> None:
    """Copy ``reader`` to ``writer`` until EOF or a connection error, then close ``writer``: one
    direction of a forwarded connection (the forwarders of stack/netns.py, stack/servernet.py and the
    tests' partition gate use it too). Bytes read while ``open_`` is clear are held until it is set
    (a partition: TCP delivers them late)."""
    try:
        while data := await reader.read(65536):
            if open_ is not None:
                await open_.wait()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:  # RuntimeError: the loop is already closing (a forwarder stopped mid-connection)
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


async def serve(port: int, backends: list[int]) -> None:
    """Forward until SIGTERM/SIGINT."""
    await serve_until_signalled(Forwarder(backends).handle, "127.0.0.1", port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--backend", type=int, action="append", required=True, help="backend port, by priority"
    )
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.backend))


if __name__ == "__main__":
    main()
