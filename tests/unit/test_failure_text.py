"""The failure text the status page and the logs show: the reason once, then the exception type."""

from __future__ import annotations

from redis.exceptions import AuthenticationError, ConnectionError

from tierwatch.probes.base import describe_failure
from tierwatch.probes.redis import redis_failure


def test_a_redis_failure_names_its_reason_once() -> None:
    assert describe_failure(redis_failure(ConnectionError("Error 111 connecting to 10.0.0.1:6379"))) == (
        "error: ConnectionError"
    )
    assert (
        describe_failure(redis_failure(AuthenticationError("invalid password")))
        == "auth: AuthenticationError"
    )
