"""HTTP probe for app servers: status, optional body match, latency, TLS certificate expiry.

The GET itself (TLS options, bounded reads, redirects, expectations) is ``clients.http``, the same
check the recovery actions make before they act.
"""

from __future__ import annotations

from ..clients.http import HttpAnswer, HttpClient, HttpFailure, HttpRules, ssl_context, tls_verify
from ..metric_catalog import metric
from .base import Observation, Probe, ProbeFailure, TargetInfo

__all__ = ["HttpProbe", "ssl_context", "tls_verify"]

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
    "tierwatch_http_response_size_bytes",
    "gauge",
    "Size of the last response body.",
    section="http",
    opt_in="http_response_size",
)


class HttpProbe(Probe):
    """GET the target URL (following redirects unless ``follow_redirects: false``); success when the
    final status (default 2xx, else ``expect_status``) and the optional body regex match."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        self.rules = HttpRules.for_target(info.target)
        self._client: HttpClient | None = None
        self._expiry: float | None = None

    async def probe(self, deadline: float | None = None) -> Observation:
        if self._client is None:
            self._client = HttpClient(self.info.timeout, tls_verify(self.info.target))
        try:
            if deadline is not None:  # the caller cancels the GET at its deadline: no second timer
                answer = await self._client.get(self.info.target.url, self.rules, caller_deadline=True)
            else:
                answer = await self._client.get(
                    self.info.target.url, self.rules, deadline=self.deadline(None)
                )
        except HttpFailure as exc:
            raise ProbeFailure(exc.reason, str(exc)) from exc
        observation = Observation(io_seconds=answer.elapsed)
        self.check_answer(answer, observation)
        return observation

    def check_answer(self, answer: HttpAnswer, observation: Observation) -> None:
        """Record status, size and TLS expiry; raise ProbeFailure when expectations are not met."""
        observation.add(HTTP_STATUS, answer.status)
        if answer.size is not None:
            observation.add(HTTP_CONTENT_LENGTH, answer.size)
        if answer.cert_expiry is not None:
            self._expiry = answer.cert_expiry
        if self._expiry is not None and answer.url.startswith("https:"):
            observation.add(HTTP_TLS_EXPIRY, self._expiry)
        problem = self.rules.problem(answer)
        if problem is not None:
            raise ProbeFailure("protocol", problem)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
