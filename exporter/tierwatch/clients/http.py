"""Does this HTTP target answer? One bounded GET, shared by the probes and the recovery actions.

Every read is bounded, whatever the target does:

- the whole exchange (redirects included) runs under one deadline, so a body that trickles cannot
  hold a caller past it;
- at most ``max_body_bytes`` of a body are read; the status comes from the headers (capped at 64 KiB,
  see ``http_wire``), so a body longer than the cap is a failure only when it must be inspected:
  ``expect_body`` is matched within the first ``max_body_bytes`` (no match there is a ``protocol``
  failure), and a caller that needs the whole body (the stats CSV) gets a ``protocol`` failure.
  Otherwise a body declared longer than the cap is not read at all, one without a declared length is
  read up to the cap, and the connection is closed, not reused;
- redirects are followed by hand, each hop read with the same cap, up to MAX_REDIRECTS; a loop, one
  more redirect or a redirect to a non-HTTP URL is a ``protocol`` failure. With
  ``follow_redirects: false`` the first answer is judged, so a 3xx fails unless ``expect_status``
  lists it. By default an answer is good when its status is 2xx.

The transport is ``http_wire``: HTTP/1.1 on asyncio with httptools' parser, one kept-alive connection
per origin (``connections`` for a client that runs requests concurrently), reopened after any error,
``Connection: close`` or unread body. It took the exporter from ~2.6 to ~0.9 CPU-ms per probe
(bench/README.md, "CPU per probe: the HTTP client"). ``HttpClient`` and ``HttpAnswer`` are the whole
interface, so the transport can be swapped without touching a caller.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import errno
import functools
import re
import ssl
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from ..config import TargetConfig
from .http_wire import Connection, Origin, WireAnswer, WireError

DEFAULT_MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 10
MAX_IDLE_ORIGINS = 4  # a client keeps connections to at most this many origins (a target + its redirects)
_GOOD = frozenset(range(200, 300))
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# kept as they are in a request target: RFC 3986 reserved characters and "%" (already escaped bytes)
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
_HOST = re.compile(r"[A-Za-z0-9._~%:-]+")  # a name, an IPv4 or (unbracketed) IPv6 address


class HttpFailure(Exception):
    """A GET failed; ``reason`` is one of timeout, refused, auth, protocol, error. The message never
    holds a body, a header value or a credential."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@functools.cache
def ssl_context(cafile: str | None, verify: bool) -> ssl.SSLContext:
    """The TLS context for one setting, shared by every client using it."""
    # Building a context loads the CA bundle, ~15 ms of CPU and ~0.5 MB each: too much to repeat for
    # hundreds of targets, so every client with the same setting shares one.
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def tls_verify(target: TargetConfig) -> ssl.SSLContext:
    """The (shared) TLS context to verify the target's certificate with, from its TLS options."""
    return ssl_context(target.tls_ca_file, not target.tls_skip_verify)


@dataclass(frozen=True)
class HttpRules:
    """What makes an answer good, and how much of it may be read."""

    accept: frozenset[int] = _GOOD
    expect_body: re.Pattern[str] | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    follow_redirects: bool = True
    need_whole_body: bool = False

    @classmethod
    def for_target(cls, target: TargetConfig) -> HttpRules:
        """The target's expectations (expect_status, expect_body, max_body_bytes, follow_redirects)."""
        return cls(
            accept=frozenset(target.expect_status) if target.expect_status else _GOOD,
            expect_body=re.compile(target.expect_body) if target.expect_body else None,
            max_body_bytes=target.max_body_bytes,
            follow_redirects=target.follow_redirects,
        )

    @property
    def inspects_body(self) -> bool:
        return self.expect_body is not None or self.need_whole_body

    def problem(self, answer: HttpAnswer) -> str | None:
        """Why ``answer`` does not meet these rules, or None when it does."""
        if answer.status not in self.accept:
            return f"unexpected status {answer.status}"
        if self.expect_body is not None and not self.expect_body.search(answer.text):
            where = "" if answer.complete else f" within the first {self.max_body_bytes} bytes"
            return f"body did not match expect_body{where}"
        return None


@dataclass(frozen=True)
class HttpAnswer:
    """The final answer of a GET (after redirects): status, lower-cased headers, the body read."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    complete: bool  # False when the body is longer than the cap: the rest was not read
    size: int | None  # the declared Content-Length, else the bytes read
    url: str
    redirects: int
    cert_expiry: float | None  # notAfter of the peer certificate (https only)
    elapsed: float = 0.0  # seconds from connecting (or writing the request) to the final answer

    @property
    def text(self) -> str:
        return self.body.decode(_charset(self.headers.get("content-type", "")), "replace")


class HttpClient:
    """Bounded GETs over at most ``connections`` kept-alive connections per origin (one by default:
    a probe's client talks to one target, one request at a time).

    With ``fresh_connections`` every request asks the server to close its connection afterwards (a
    VIP may move between machines between two probes).
    """

    def __init__(
        self, timeout: float, tls: ssl.SSLContext, *, connections: int = 1, fresh_connections: bool = False
    ):
        self.timeout = timeout
        self._tls = tls
        self._connections = max(1, connections)
        self._fresh = fresh_connections
        self._gate = asyncio.Semaphore(self._connections)
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
        self._urls: dict[str, _Url] = {}

    async def get(
        self, url: str, rules: HttpRules, *, deadline: float | None = None, caller_deadline: bool = False
    ) -> HttpAnswer:
        """GET ``url`` (following redirects per ``rules``) by ``deadline`` (an instant of the event
        loop's clock), else within the client's ``timeout`` from now; with ``caller_deadline``, under
        the caller's own cancellation and no timer here (a probe, which the monitor cancels at its
        deadline: one timer per probe instead of two).

        Raises HttpFailure for transport errors, the deadline, redirect problems and, when the whole
        body is needed, a body over the cap; the status and body are not judged here (see ``check``).
        """
        try:
            if caller_deadline:
                return await self._get(url, rules)
            if deadline is not None:
                async with asyncio.timeout_at(deadline):
                    return await self._get(url, rules)
            async with asyncio.timeout(self.timeout):
                return await self._get(url, rules)
        except TimeoutError:
            raise HttpFailure("timeout", f"no complete answer within {self.timeout:g}s") from None
        except WireError as exc:
            raise HttpFailure(exc.reason, str(exc)) from None
        except ssl.SSLError as exc:
            raise HttpFailure("protocol", type(exc).__name__) from exc
        except OSError as exc:
            raise HttpFailure(_os_reason(exc), type(exc).__name__) from exc

    async def check(self, url: str, rules: HttpRules, *, deadline: float | None = None) -> HttpAnswer:
        """``get``, then judge the answer: raises HttpFailure("protocol") when ``rules`` are not met."""
        answer = await self.get(url, rules, deadline=deadline)
        problem = rules.problem(answer)
        if problem is not None:
            raise HttpFailure("protocol", problem)
        return answer

    async def close(self) -> None:
        """Close every connection, and return once their sockets are closed."""
        connections, self._open = list(self._open), set()
        self._idle.clear()
        for connection in connections:
            connection.abort()
        loop = asyncio.get_running_loop()
        waits = [c.wait_closed() for c in connections if c.loop is loop]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=1.0)

    async def _get(self, url: str, rules: HttpRules) -> HttpAnswer:
        current = self._url(url)
        seen: set[tuple[Origin, str]] | None = None  # the URLs of this GET, once it is redirected
        started: float | None = None
        for hop in range(MAX_REDIRECTS + 1):
            wire, expiry, began = await self._exchange(current, rules.max_body_bytes, rules.inspects_body)
            started = began if started is None else started
            location = wire.headers.get("location")
            if rules.follow_redirects and wire.status in _REDIRECTS and location is not None:
                if seen is None:
                    seen = {current.key}
                current = self._redirect_target(current, location)
                if current.key in seen:
                    raise HttpFailure("protocol", "redirect loop")
                if hop == MAX_REDIRECTS:
                    raise HttpFailure("protocol", f"more than {MAX_REDIRECTS} redirects")
                seen.add(current.key)
                continue
            if rules.need_whole_body and not wire.complete:
                raise HttpFailure("protocol", f"body larger than {rules.max_body_bytes} bytes")
            body = wire.body
            if rules.inspects_body:
                body = _decoded(body, wire.headers.get("content-encoding", ""), rules.max_body_bytes)
            return HttpAnswer(
                status=wire.status,
                headers=wire.headers,
                body=body,
                complete=wire.complete,
                size=wire.declared if wire.declared is not None else len(wire.body),
                url=current.text,
                redirects=hop,
                cert_expiry=expiry,
                elapsed=max(0.0, wire.finished - started),
            )
        raise AssertionError("unreachable: the loop returns or raises")

    async def _exchange(
        self, url: _Url, limit: int, read_over_limit: bool
    ) -> tuple[WireAnswer, float | None, float]:
        """One request on a kept-alive (or new) connection: (answer, certificate expiry, start time)."""
        request = url.request_close if self._fresh else url.request
        async with self._gate:
            began = time.perf_counter()
            for attempt in (1, 2):
                connection = self._take_idle(url.origin) if attempt == 1 else None
                if connection is None:
                    connection = await Connection.open(url.origin, self._tls)
                    self._open.add(connection)
                    connection.on_closed(self._open.discard)
                    reused = False
                else:
                    reused = True
                try:
                    answer = await connection.exchange(request, limit, read_over_limit)
                except WireError as exc:
                    connection.abort()
                    if reused and exc.before_answer:
                        continue  # the server closed the idle connection: once more on a new one
                    raise
                except BaseException:
                    connection.abort()
                    raise
                expiry = connection.cert_expiry() if url.origin.tls else None
                if connection.reusable and not self._fresh:
                    self._keep(url.origin, connection)
                else:
                    connection.abort()
                return answer, expiry, began
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.is_closed:
                return connection
        return None

    def _keep(self, origin: Origin, connection: Connection) -> None:
        idle = self._idle.pop(origin, None)
        if idle is None:
            idle = []
            if len(self._idle) >= MAX_IDLE_ORIGINS:  # forget the least recently used origin
                for stale in self._idle.pop(next(iter(self._idle))):
                    stale.abort()
        self._idle[origin] = idle  # (re)inserted last: most recently used
        if len(idle) < self._connections:
            idle.append(connection)
        else:
            connection.abort()

    def _url(self, url: str, where: str = "") -> _Url:
        """The parsed URL (cached: a probe GETs the same URL every time); ``where`` prefixes errors."""
        parsed = self._urls.get(url)
        if parsed is None:
            try:
                parsed = _Url.parse(url)
            except _NotHttp:
                raise HttpFailure("protocol", f"{where}a non-HTTP URL") from None
            except ValueError:
                raise HttpFailure("protocol", f"{where}an invalid URL") from None
            if len(self._urls) >= 64:  # a client sees its target's URL and that URL's redirects
                self._urls.clear()
            self._urls[url] = parsed
        return parsed

    def _redirect_target(self, current: _Url, location: str) -> _Url:
        try:
            joined = urljoin(current.text, location.strip())
        except ValueError:
            raise HttpFailure("protocol", "redirect to an invalid URL") from None
        return self._url(joined, "redirect to ")


async def answer_problem(target: TargetConfig, timeout: float) -> str | None:
    """None if the target's URL answers as its config expects (TLS options, expect_status,
    expect_body, bounded reads), else a short secret-free problem. Uses a fresh connection."""
    client = HttpClient(timeout, tls_verify(target))
    try:
        await client.check(target.url, HttpRules.for_target(target))
    except HttpFailure as exc:
        return f"{exc.reason}: {exc}"
    finally:
        await client.close()
    return None


class _NotHttp(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Url:
    """A parsed http(s) URL and the GET request for it (with and without ``Connection: close``)."""

    origin: Origin
    target: str  # path and query, as sent
    text: str  # the URL without its fragment
    request: bytes
    request_close: bytes

    @property
    def key(self) -> tuple[Origin, str]:
        return (self.origin, self.target)

    @classmethod
    def parse(cls, url: str) -> _Url:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise _NotHttp(scheme)
        host = parts.hostname
        if not host:
            raise ValueError("no host")
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
        if not _HOST.fullmatch(host):  # nothing that could end the Host header line
            raise ValueError("invalid host")
        default = _DEFAULT_PORTS[scheme]
        port = parts.port or default  # .port raises ValueError for a bad port
        target = quote(parts.path or "/", safe=_TARGET_SAFE)
        if parts.query:
            target += "?" + quote(parts.query, safe=_TARGET_SAFE)
        netloc = f"[{host}]" if ":" in host else host
        host_header = netloc if port == default else f"{netloc}:{port}"
        head = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tierwatch\r\nAccept: */*\r\n"
            "Accept-Encoding: identity\r\n"
        )
        if parts.username is not None:  # credentials in the URL: Basic auth, as browsers and httpx do
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head += f"Authorization: Basic {base64.b64encode(user_pass).decode('ascii')}\r\n"
        text = urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))
        raw = head.encode("latin-1")
        return cls(
            Origin(scheme, host, port), target, text, raw + b"\r\n", raw + b"Connection: close\r\n\r\n"
        )


def _decoded(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its content-encoding, at most ``limit`` bytes of it (no decompression bomb)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise HttpFailure("protocol", "unsupported content-encoding")
    try:
        return zlib.decompressobj(wbits=32 + zlib.MAX_WBITS).decompress(body, limit)
    except zlib.error:
        raise HttpFailure("protocol", "body does not decode per its content-encoding") from None


def _charset(content_type: str) -> str:
    match = re.search(r"charset=\"?([A-Za-z0-9._-]+)", content_type)
    if match:
        try:
            return codecs.lookup(match.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def _os_reason(exc: OSError) -> str:
    """timeout, refused or error for an OSError of a connect, read or write."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "refused"
    return "error"
