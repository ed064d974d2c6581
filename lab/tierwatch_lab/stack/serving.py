"""Run a small asyncio TCP server until SIGTERM or SIGINT (the stack's helper processes)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve_until_signalled(handler: Handler, host: str, port: int) -> None:
    """Accept connections on ``host:port`` with ``handler`` until SIGTERM/SIGINT."""
    server = await asyncio.start_server(handler, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
