"""A one-sided partition on loopback: a TCP forwarder (in a thread of the test) standing for a
server's address. ``cut_new()`` stops it accepting connections while the ones already piped keep
flowing, so a server's replicas (connected before the cut) still see it while any new client (the
recovery service, an exporter) cannot reach it: a watcher cut off from the primary alone.
``blackhole()`` is a full partition as a network makes it: nothing is refused or reset, bytes just stop
(new connections are accepted and hear nothing) until ``heal()``, when the held bytes flow again.

Imported explicitly: ``from partition_fixtures import Gate`` (and the ``gates`` fixture, which closes
the gates a test made)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import pytest

from tierwatch_lab.stack.ports import free_port
from tierwatch_lab.stack.tcp_forwarder import pipe


class Gate:
    """Listens on ``port`` (127.0.0.1) and pipes each connection to ``backend``."""

    def __init__(self, backend: int):
        self.backend = backend
        self.port = free_port()
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()  # cleared while blackholed; used from the gate's own loop only
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        await self._open.wait()  # blackholed: the client's connection hears nothing
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.backend), 2.0
            )
        except (OSError, TimeoutError):
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(pipe(reader, up_writer, self._open), pipe(up_reader, writer, self._open))

    def blackhole(self) -> None:
        """Partition: every byte through the gate, both ways and on new connections, stops."""

        async def close() -> None:
            self._open.clear()

        self._call(close())

    def heal(self) -> None:
        """End a blackhole: the held bytes and the waiting connections go through."""

        async def open_() -> None:
            self._open.set()

        self._call(open_())

    def cut_new(self) -> None:
        """Stop accepting: new connections are refused, established ones keep flowing."""

        async def close() -> None:
            assert self._server is not None
            self._server.close()

        self._call(close())

    def cut_all(self) -> None:
        """Stop accepting and drop every established connection (the peer is cut off entirely)."""

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.transport.abort()
            self._writers.clear()

        self._call(close())

    def close(self) -> None:
        """Close every connection and stop the thread (bounded)."""

        async def close_all() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                with contextlib.suppress(Exception):
                    writer.close()

        with contextlib.suppress(Exception):
            self._call(close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """The gates a test makes (append them), closed after it."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.close()
