"""The HTTP client's own transport (clients/http_wire.py on asyncio + httptools), against real local
servers: what an HTTP library used to do for the probes and must still be done right — chunked and
until-close bodies, one kept-alive connection per target, reconnecting when the server closes it or
answers ``Connection: close``, TLS with a CA file and the certificate's expiry, bounded headers and
bodies, and plain GETs (never a HEAD first)."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hostile_peers import start_hostile_http

from tierwatch.clients.http import HttpClient, HttpFailure, HttpRules, ssl_context
from tierwatch.clients.http_wire import MAX_HEADER_BYTES
from tierwatch.config import LoadedConfig
from tierwatch.probes.base import TargetInfo
from tierwatch.probes.http import HttpProbe
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.tls import NOT_AFTER, self_signed

from helpers import connections_to

PLAIN = ssl_context(None, True)
ANY = HttpRules()

# (request head, connection number from 1, request number on that connection from 1) -> the bytes to
# answer, or None to close the connection without answering
Reply = Callable[[bytes, int, int], Awaitable[bytes | None]]


def ok(body: bytes = b"healthy\n", *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), head.encode()) + body


class Scripted:
    """A local HTTP server in the test's event loop that answers as ``reply`` says and counts the
    connections it accepted and the requests it read."""

    def __init__(self, reply: Reply, *, close_after_answer: bool = False, tls: ssl.SSLContext | None = None):
        self.reply = reply
        self.close_after_answer = close_after_answer
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def url(self, path: str = "/health") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                served += 1
                answer = await self.reply(head, number, served)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after_answer:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # the client went away, or the test's loop ends
        finally:
            writer.close()


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


async def get_all(client: HttpClient, url: str, count: int, rules: HttpRules = ANY) -> list[Any]:
    answers = [await client.check(url, rules) for _ in range(count)]
    await client.close()
    return answers


def test_chunked_body_is_read_whole_and_the_connection_kept() -> None:
    async def chunked(head: bytes, conn: int, n: int) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
            b"5\r\nstatu\r\n8\r\ns: ok #%d\r\n0\r\n\r\n" % n
        )

    async def scenario() -> tuple[list[Any], int]:
        async with Scripted(chunked) as server:
            client = HttpClient(2.0, PLAIN)
            answers = await get_all(
                client, server.url(), 3, HttpRules(expect_body=re.compile(r"^status: ok #\d$"))
            )
            return answers, server.connections

    answers, connections = run(scenario)
    assert [a.body for a in answers] == [b"status: ok #1", b"status: ok #2", b"status: ok #3"]
    assert all(a.complete and a.size == 13 for a in answers)
    assert connections == 1  # three answers over one kept-alive connection


def test_body_until_close_is_read_whole_and_not_reused() -> None:
    async def http10(head: bytes, conn: int, n: int) -> bytes:
        return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhealthy until close"

    async def scenario() -> tuple[list[Any], int]:
        async with Scripted(http10, close_after_answer=True) as server:
            answers = await get_all(
                HttpClient(2.0, PLAIN), server.url(), 2, HttpRules(expect_body=re.compile("close$"))
            )
            return answers, server.connections

    answers, connections = run(scenario)
    assert [a.body for a in answers] == [b"healthy until close"] * 2
    assert connections == 2


def test_probes_reuse_one_connection_to_a_real_backend(stack: Stack) -> None:
    backend = start_http_backend(stack, "kept")

    async def scenario() -> list[int]:
        client = HttpClient(2.0, PLAIN)
        held = []
        for _ in range(5):
            answer = await client.check(backend.url, ANY)
            assert answer.status == 200 and answer.body == b"ok kept\n"
            held.append(connections_to({backend.port}))
        await client.close()
        held.append(connections_to({backend.port}))
        return held

    before = _backend_connections(backend.port)
    held = run(scenario)
    assert held == [1, 1, 1, 1, 1, 0]  # one connection held across the probes, closed with the client
    assert _backend_connections(backend.port) - before == 2  # the probes' one + the stats request's


def _backend_connections(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as resp:
        return int(resp.read().decode().split()[1].split("=")[1])


def test_server_closing_between_probes_is_not_a_failure() -> None:
    """A server that closes its side after each answer (idle timeout, restart), and one that closes a
    kept-alive connection just as the next request arrives: each probe still gets its answer."""

    async def answer(head: bytes, conn: int, n: int) -> bytes | None:
        return ok() if n == 1 else None  # a second request on a connection: close without answering

    async def scenario() -> tuple[int, int, int, int]:
        async with Scripted(lambda h, c, n: _ready(ok()), close_after_answer=True) as closing:
            await get_all(HttpClient(2.0, PLAIN), closing.url(), 4)
        async with Scripted(answer) as racing:
            await get_all(HttpClient(2.0, PLAIN), racing.url(), 4)
        return closing.connections, len(closing.requests), racing.connections, len(racing.requests)

    closing_conns, closing_requests, racing_conns, racing_requests = run(scenario)
    assert (closing_conns, closing_requests) == (4, 4)
    # the client reused each kept-alive connection once, saw it closed before any answer, and retried
    # on a new one: 4 answers, 3 requests that met a closing connection
    assert (racing_conns, racing_requests) == (4, 7)


async def _ready(value: bytes | None) -> bytes | None:
    return value


def test_connection_close_answer_is_never_reused() -> None:
    """``Connection: close`` in an answer: the client closes that connection itself (even when the
    server keeps it open) and opens a new one for the next probe."""

    async def scenario() -> tuple[int, list[int]]:
        async with Scripted(lambda h, c, n: _ready(ok(b"ok", "Connection: close"))) as server:
            client = HttpClient(2.0, PLAIN)
            held = []
            for _ in range(3):
                await client.check(server.url(), ANY)
                await asyncio.sleep(0)  # let the aborted socket close
                await asyncio.sleep(0)
                held.append(connections_to({server.port}))
            await client.close()
            return server.connections, held

    connections, held = run(scenario)
    assert connections == 3
    assert held == [0, 0, 0]


def test_a_probe_is_one_plain_get() -> None:
    """No HEAD first, no body, no compression asked for; the Host header names the port."""

    async def scenario() -> tuple[list[bytes], int]:
        async with Scripted(lambda h, c, n: _ready(ok())) as server:
            await get_all(HttpClient(2.0, PLAIN), server.url("/health?deep=1"), 2)
            return server.requests, server.port

    requests, port = run(scenario)
    assert len(requests) == 2
    lines = requests[0].decode().split("\r\n")
    assert lines[0] == "GET /health?deep=1 HTTP/1.1"
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"] == "tierwatch"
    assert "content-length" not in headers and "transfer-encoding" not in headers


def test_fresh_connections_ask_the_server_to_close() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        async with Scripted(lambda h, c, n: _ready(ok())) as server:
            await get_all(HttpClient(2.0, PLAIN, fresh_connections=True), server.url(), 3)
            return server.requests, server.connections

    requests, connections = run(scenario)
    assert connections == 3
    assert all(b"\r\nConnection: close\r\n" in r for r in requests)


def test_tls_with_a_ca_file_reads_the_certificate_expiry_and_keeps_the_session(tmp_path: Path) -> None:
    bundle, ca = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(bundle)

    async def scenario() -> dict[str, Any]:
        async with Scripted(lambda h, c, n: _ready(ok()), tls=server_tls) as server:
            verified = await get_all(HttpClient(2.0, ssl_context(str(ca), True)), server.url(), 3)
            after_verified = server.connections
            unverified = await get_all(HttpClient(2.0, ssl_context(None, False)), server.url(), 1)
            untrusted = HttpClient(2.0, PLAIN)
            try:
                await untrusted.get(server.url(), ANY)
                failure = None
            except HttpFailure as exc:
                failure = exc.reason
            await untrusted.close()
            return {
                "verified": verified,
                "connections": after_verified,
                "unverified": unverified,
                "untrusted": failure,
            }

    seen = run(scenario)
    assert [a.status for a in seen["verified"]] == [200, 200, 200]
    assert all(a.cert_expiry == NOT_AFTER.timestamp() for a in seen["verified"])
    assert seen["connections"] == 1  # one TLS session for the three probes
    assert seen["unverified"][0].cert_expiry == NOT_AFTER.timestamp()  # read without verification too
    assert seen["untrusted"] == "protocol"


def test_endless_headers_and_garbage_are_protocol_failures(stack: Stack) -> None:
    hostile = start_hostile_http(stack)

    async def failure(path: str) -> tuple[str, str]:
        client = HttpClient(2.0, PLAIN)
        try:
            await client.get(hostile.url(path), ANY)
        except HttpFailure as exc:
            return exc.reason, str(exc)
        finally:
            await client.close()
        raise AssertionError(f"{path} answered")

    async def scenario() -> list[tuple[str, str]]:
        return [await failure("/endless-headers"), await failure("/garbage")]

    headers, garbage = run(scenario)
    assert headers == ("protocol", f"answer headers longer than {MAX_HEADER_BYTES} bytes")
    assert garbage == ("protocol", "not a valid HTTP/1.1 answer")


def test_body_cap_stops_reading_and_drops_the_connection() -> None:
    big = b"healthy\n" + b"." * (256 * 1024)

    async def answer(head: bytes, conn: int, n: int) -> bytes:
        if head.startswith(b"GET /chunked "):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                len(big),
                big,
            )
        return ok(big)

    async def scenario() -> dict[str, Any]:
        async with Scripted(answer) as server:
            client = HttpClient(2.0, PLAIN)
            inspected = await client.check(
                server.url(), HttpRules(expect_body=re.compile("^healthy"), max_body_bytes=1024)
            )
            skipped = await client.check(server.url(), HttpRules(max_body_bytes=1024))
            chunked = await client.check(server.url("/chunked"), HttpRules(max_body_bytes=2048))
            try:
                await client.get(server.url(), HttpRules(max_body_bytes=1024, need_whole_body=True))
                whole = None
            except HttpFailure as exc:
                whole = (exc.reason, str(exc))
            await client.close()
            return {
                "inspected": inspected,
                "skipped": skipped,
                "chunked": chunked,
                "whole": whole,
                "connections": server.connections,
            }

    seen = run(scenario)
    inspected, skipped, chunked = seen["inspected"], seen["skipped"], seen["chunked"]
    assert len(inspected.body) == 1024 and not inspected.complete and inspected.size == len(big)
    assert skipped.body == b"" and not skipped.complete and skipped.size == len(big)  # not read at all
    assert len(chunked.body) == 2048 and not chunked.complete
    assert seen["whole"] == ("protocol", "body larger than 1024 bytes")
    assert seen["connections"] == 4  # a connection whose body was left unread is never reused


def test_redirect_hops_share_the_kept_alive_connection() -> None:
    async def answer(head: bytes, conn: int, n: int) -> bytes:
        if head.startswith(b"GET /old "):
            return b"HTTP/1.1 301 Moved\r\nLocation: /new\r\nContent-Length: 5\r\n\r\nmoved"
        return ok(b"new place")

    async def scenario() -> tuple[list[Any], int]:
        async with Scripted(answer) as server:
            answers = await get_all(HttpClient(2.0, PLAIN), server.url("/old"), 2)
            return answers, server.connections

    answers, connections = run(scenario)
    assert [(a.status, a.redirects, a.url.endswith("/new")) for a in answers] == [(200, 1, True)] * 2
    assert connections == 1


def test_refused_and_timeout_reasons() -> None:
    async def never(head: bytes, conn: int, n: int) -> bytes:
        await asyncio.Event().wait()
        return b""

    async def scenario() -> list[str]:
        reasons = []
        async with Scripted(never) as server:
            port = server.port
            client = HttpClient(0.3, PLAIN)
            try:
                await client.get(server.url(), ANY)
            except HttpFailure as exc:
                reasons.append(exc.reason)
            await client.close()
        client = HttpClient(0.3, PLAIN)
        try:
            await client.get(f"http://127.0.0.1:{port}/", ANY)
        except HttpFailure as exc:
            reasons.append(exc.reason)
        await client.close()
        return reasons

    assert run(scenario) == ["timeout", "refused"]


def test_probe_reports_the_time_of_its_exchange(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """The HTTP probe times its own exchange (from writing the request, or connecting, to the answer),
    so the monitor records the target's latency, not the wait for the event loop to resume the probe."""
    backend = start_http_backend(stack, "timed")
    loaded = make_config(
        [{"name": "web", "tier": "app", "targets": [{"name": "es-1", "region": "r", "url": backend.url}]}]
    )
    cluster = loaded.config.clusters[0]
    probe = HttpProbe(TargetInfo("app", cluster, cluster.targets[0], None, 1.0))

    async def scenario() -> list[tuple[float | None, float]]:
        timings = []
        for _ in range(2):  # a new connection, then the kept-alive one
            began = time.perf_counter()
            observation = await probe.probe()
            timings.append((observation.io_seconds, time.perf_counter() - began))
        await probe.close()
        return timings

    for io_seconds, around in run(scenario):
        assert io_seconds is not None and 0 < io_seconds <= around
