"""Redis client helpers shared by the probes and the recovery actions: one set of connection
options (short timeouts, no retries, no health-check pings, TLS from the target's settings), how an
error is told apart from silence, the Sentinel "no password" fallback, and reply decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Secret, TargetConfig
from .redis_bounded import BoundedHiredisParser

ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


def connection_options(
    password: Secret | None,
    timeout: float,
    *,
    client_name: str,
    tls: bool = False,
    tls_skip_verify: bool = False,
    tls_ca_file: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a redis-py connection or client: the password given (never the URL's),
    ``timeout`` on connect and every read, no retry, no health check, RESP2, TLS settings if ``tls``."""
    options: dict[str, Any] = {
        "password": password.reveal() if password else None,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "client_name": client_name,
        "protocol": 2,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "parser_class": BoundedHiredisParser,  # a hostile server's reply costs at most MAX_REPLY_BYTES
    }
    if tls and tls_skip_verify:
        options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
    if tls and tls_ca_file:
        options["ssl_ca_certs"] = tls_ca_file
    return options


def redis_client(
    target: TargetConfig, password: Secret | None, timeout: float, *, client_name: str
) -> aioredis.Redis:
    """A short-lived client for one target (ACL user from the URL, ``password`` given); use it in
    ``async with`` so its connections are closed."""
    return aioredis.Redis.from_url(
        target.url,
        decode_responses=True,
        **connection_options(
            password,
            timeout,
            client_name=client_name,
            tls=target.url.startswith("rediss://"),
            tls_skip_verify=target.tls_skip_verify,
            tls_ca_file=target.tls_ca_file,
        ),
    )


def silent(exc: BaseException) -> bool:
    """True if ``exc`` means the server gave no answer at all (refused, reset, timed out); an error
    reply, a refused password or LOADING is an answer."""
    if isinstance(exc, AuthenticationError | BusyLoadingError):
        return False
    return isinstance(exc, RedisConnectionError | RedisTimeoutError | TimeoutError | OSError)


def problem(exc: BaseException) -> str:
    """A secret-free description of a client error (its type only)."""
    return type(exc).__name__


def refuses_password(exc: BaseException) -> bool:
    """True if ``exc`` (or the error it replaced) is a server without requirepass refusing AUTH, as a
    Sentinel without a password does: then ask it again without the cluster's password."""
    for current in (exc, exc.__cause__, exc.__context__):
        if isinstance(current, AuthenticationError) and "without any password" in str(current):
            return True
    return False


async def command_trying_without_password(
    target: TargetConfig, password: Secret | None, timeout: float, *command: Any, client_name: str
) -> Any:
    """Run one command on ``target`` with ``password``, and once more without one if the server has
    no password to check (see ``refuses_password``)."""
    try:
        async with redis_client(target, password, timeout, client_name=client_name) as client:
            return await client.execute_command(*command)
    except AuthenticationError as exc:
        if password is None or not refuses_password(exc):
            raise
    async with redis_client(target, None, timeout, client_name=client_name) as client:
        return await client.execute_command(*command)


def text(value: Any) -> str:
    """A reply item as text (bytes decoded, invalid UTF-8 replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def pairs(flat: Sequence[Any]) -> dict[str, Any]:
    """A flat ``[key, value, key, value, ...]`` reply as a mapping (keys as text, values as given)."""
    return {text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
