"""Does this HTTP target answer? One bounded GET, shared by the probes and the recovery actions.

Every read is bounded, whatever the target does:

- the whole exchange (redirects included) runs under one deadline, so a body that trickles cannot
  hold a caller past it;
- at most ``max_body_bytes`` of a body are read (plus one network read of at most 64 KiB); the status
  comes from the headers (which h11 caps at 100 KiB), so a body longer than the cap is a failure only
  when it must be inspected: ``expect_body`` is matched within the first ``max_body_bytes`` (no match
  there is a ``protocol`` failure), and a caller that needs the whole body (the stats CSV) gets a
  ``protocol`` failure. Otherwise the rest is left unread and the connection is closed, not reused;
- redirects are followed by hand (httpx reads a redirect's whole body before following it), up to
  MAX_REDIRECTS; a loop, one more redirect or a redirect to a non-HTTP URL is a ``protocol`` failure.
  With ``follow_redirects: false`` the first answer is judged, so a 3xx fails unless ``expect_status``
  lists it. By default an answer is good when its status is 2xx.

``HttpClient`` and ``HttpAnswer`` are the whole interface (httpx stays inside this module), so the
transport can be swapped without touching a caller.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import functools
import re
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC

import httpx

from ..config import TargetConfig

DEFAULT_MAX_BODY_BYTES = 64 * 1024
MAX_REDIRECTS = 10
_GOOD = frozenset(range(200, 300))


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

    @property
    def text(self) -> str:
        return self.body.decode(_charset(self.headers.get("content-type", "")), "replace")


class HttpClient:
    """Bounded GETs over at most ``connections`` kept-alive connections (one per target by default).

    With ``fresh_connections`` every request asks the server to close its connection afterwards (a
    VIP may move between machines between two probes).
    """

    def __init__(
        self, timeout: float, tls: ssl.SSLContext, *, connections: int = 1, fresh_connections: bool = False
    ):
        self.timeout = timeout
        headers = {"User-Agent": "tierwatch", "Accept-Encoding": "identity"}
        if fresh_connections:
            headers["Connection"] = "close"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=60.0
            ),
            verify=tls,
            follow_redirects=False,  # followed by hand, with bounded reads (see the module docstring)
            trust_env=False,
            headers=headers,
        )

    async def get(self, url: str, rules: HttpRules) -> HttpAnswer:
        """GET ``url`` (following redirects per ``rules``) within the client's deadline.

        Raises HttpFailure for transport errors, the deadline, redirect problems and, when the whole
        body is needed, a body over the cap; the status and body are not judged here (see ``check``).
        """
        try:
            async with asyncio.timeout(self.timeout):
                return await self._get(url, rules)
        except TimeoutError:
            raise HttpFailure("timeout", f"no complete answer within {self.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise HttpFailure(_transport_reason(exc), type(exc).__name__) from exc
        except ssl.SSLError as exc:
            raise HttpFailure("protocol", type(exc).__name__) from exc
        except OSError as exc:
            raise HttpFailure(_transport_reason(exc), type(exc).__name__) from exc

    async def check(self, url: str, rules: HttpRules) -> HttpAnswer:
        """``get``, then judge the answer: raises HttpFailure("protocol") when ``rules`` are not met."""
        answer = await self.get(url, rules)
        problem = rules.problem(answer)
        if problem is not None:
            raise HttpFailure("protocol", problem)
        return answer

    async def close(self) -> None:
        """Close every connection."""
        await self._client.aclose()

    async def _get(self, url: str, rules: HttpRules) -> HttpAnswer:
        current = httpx.URL(url)
        seen = {current.copy_with(fragment=None)}
        for hop in range(MAX_REDIRECTS + 1):
            async with self._client.stream("GET", current) as response:
                if rules.follow_redirects and response.has_redirect_location:
                    await _read_body(response, rules.max_body_bytes, must_read=False)
                    current = _redirect_target(response)
                    if current in seen:
                        raise HttpFailure("protocol", "redirect loop")
                    if hop == MAX_REDIRECTS:
                        raise HttpFailure("protocol", f"more than {MAX_REDIRECTS} redirects")
                    seen.add(current)
                    continue
                declared = _content_length(response)
                if rules.need_whole_body and declared is not None and declared > rules.max_body_bytes:
                    raise HttpFailure("protocol", f"body larger than {rules.max_body_bytes} bytes")
                body, complete = await _read_body(response, rules.max_body_bytes, rules.inspects_body)
                if rules.need_whole_body and not complete:
                    raise HttpFailure("protocol", f"body larger than {rules.max_body_bytes} bytes")
                headers = {k.lower(): v for k, v in response.headers.items()}
                if rules.inspects_body:
                    body = _decoded(body, headers.get("content-encoding", ""), rules.max_body_bytes)
                return HttpAnswer(
                    status=response.status_code,
                    headers=headers,
                    body=body,
                    complete=complete,
                    size=declared if declared is not None else len(body),
                    url=str(response.url),
                    redirects=hop,
                    cert_expiry=cert_expiry(response) if response.url.scheme == "https" else None,
                )
        raise AssertionError("unreachable: the loop returns or raises")


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


async def answers(target: TargetConfig, timeout: float) -> bool:
    """True if the target's URL answers as its config expects (see ``answer_problem``)."""
    return await answer_problem(target, timeout) is None


def cert_expiry(response: httpx.Response) -> float | None:
    """The peer certificate's notAfter as a Unix time, if the response came over TLS."""
    stream = response.extensions.get("network_stream")
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    if ssl_object is None:
        return None
    peer = ssl_object.getpeercert()
    if peer and "notAfter" in peer:
        return float(ssl.cert_time_to_seconds(peer["notAfter"]))
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509  # only needed when verification is off

    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    return not_after.replace(tzinfo=UTC).timestamp() if not_after.tzinfo is None else not_after.timestamp()


async def _read_body(response: httpx.Response, limit: int, must_read: bool) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the (still encoded) body, and whether that is all of it. A body
    that is not inspected and declares more than the cap is not read at all."""
    declared = _content_length(response)
    if not must_read and declared is not None and declared > limit:
        return b"", False
    body = bytearray()
    async for chunk in response.aiter_raw():
        room = limit - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            return bytes(body), False
        body += chunk
    return bytes(body), True


def _content_length(response: httpx.Response) -> int | None:
    try:
        return int(response.headers.get("content-length", ""))
    except ValueError:
        return None


def _redirect_target(response: httpx.Response) -> httpx.URL:
    try:
        target = response.url.join(response.headers["location"]).copy_with(fragment=None)
    except (httpx.InvalidURL, ValueError):
        raise HttpFailure("protocol", "redirect to an invalid URL") from None
    if target.scheme not in ("http", "https"):
        raise HttpFailure("protocol", "redirect to a non-HTTP URL")
    return target


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


def _transport_reason(exc: BaseException) -> str:
    """timeout, refused, protocol or error for an exception from the transport (its cause chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, httpx.TimeoutException | TimeoutError):
            return "timeout"
        if isinstance(current, ssl.SSLError):
            return "protocol"
        if isinstance(current, ConnectionRefusedError) or (
            isinstance(current, OSError) and current.errno == errno.ECONNREFUSED
        ):
            return "refused"
        if isinstance(current, httpx.RemoteProtocolError | httpx.LocalProtocolError | httpx.DecodingError):
            return "protocol"
        current = current.__cause__ or current.__context__
    return "error"
