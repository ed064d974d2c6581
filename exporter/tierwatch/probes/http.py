"""HTTP probe for app servers: status, optional body match, latency, TLS certificate expiry."""

from __future__ import annotations

import functools
import re
import ssl
from datetime import UTC

import httpx

from ..config import TargetConfig
from ..metric_catalog import metric
from .base import Observation, Probe, ProbeFailure, TargetInfo

HTTP_STATUS = metric(
    "tierwatch_http_status_code", "gauge", "HTTP status code of the last response.", section="http"
)
HTTP_TLS_EXPIRY = metric(
    "tierwatch_http_tls_cert_expiry_timestamp_seconds",
    "gauge",
    "Unix time when the server's TLS certificate expires (https targets only).",
    section="http",
)
HTTP_CONTENT_LENGTH = metric(
    "tierwatch_http_response_size_bytes", "gauge", "Size of the last response body.", section="http"
)


@functools.cache
def ssl_context(cafile: str | None, verify: bool) -> ssl.SSLContext:
    # One context per distinct setting, shared by every client: building one loads the CA bundle,
    # which costs ~15 ms of CPU and ~0.5 MB each, too much to repeat for hundreds of targets.
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def tls_verify(target: TargetConfig) -> ssl.SSLContext:
    """The (shared) TLS context to verify the target's certificate with, from its TLS options."""
    return ssl_context(target.tls_ca_file, not target.tls_skip_verify)


def make_client(timeout: float, verify: ssl.SSLContext) -> httpx.AsyncClient:
    """An HTTP client holding at most one kept-alive connection to its target."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=60.0),
        verify=verify,
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "tierwatch"},
    )


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


class HttpProbe(Probe):
    """GET the target URL; success when the status (default 2xx/3xx) and optional body regex match."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        target = info.target
        self.expect_status = set(target.expect_status or ())
        self.expect_body = re.compile(target.expect_body) if target.expect_body else None
        self._client: httpx.AsyncClient | None = None
        self._expiry: float | None = None

    async def probe(self) -> Observation:
        if self._client is None:
            self._client = make_client(self.info.timeout, tls_verify(self.info.target))
        response = await self._client.get(self.info.target.url)
        observation = Observation()
        self.check_response(response, observation)
        return observation

    def check_response(self, response: httpx.Response, observation: Observation) -> None:
        """Record status, size and TLS expiry; raise ProbeFailure when expectations are not met."""
        observation.add(HTTP_STATUS, response.status_code)
        observation.add(HTTP_CONTENT_LENGTH, len(response.content))
        if response.url.scheme == "https":
            expiry = cert_expiry(response)
            self._expiry = expiry if expiry is not None else self._expiry
            if self._expiry is not None:
                observation.add(HTTP_TLS_EXPIRY, self._expiry)
        if self.expect_status:
            if response.status_code not in self.expect_status:
                raise ProbeFailure("protocol", f"unexpected status {response.status_code}")
        elif not 200 <= response.status_code < 400:
            raise ProbeFailure("protocol", f"unexpected status {response.status_code}")
        if self.expect_body and not self.expect_body.search(response.text):
            raise ProbeFailure("protocol", "body did not match expect_body")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
