"""Secrets: the one reader of password and token files (and password environment variables).

Every secret a config names is read once, by ``load_config``, so a missing or unreadable file is a
config error at start-up. Errors name the file or variable, never a byte of its content.
"""

from __future__ import annotations

import os

MAX_SECRET_BYTES = 64 * 1024


class SecretError(ValueError):
    """A secret could not be read; the message names where it was looked for, never its content."""


class Secret:
    """A credential that never shows itself in repr, str or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for handing to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def read_secret_file(path: str, what: str = "secret file") -> Secret:
    """The secret in ``path``: at most MAX_SECRET_BYTES of UTF-8, one trailing newline removed, not empty.

    ``what`` names the file in errors ("password file", "bearer token file", ...).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"{what} {path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"{what} {path} is not valid UTF-8 text") from None
    value = _strip_one_newline(value)
    if not value:
        raise SecretError(f"{what} {path} is empty")
    return Secret(value)


def read_secret_env(name: str) -> Secret:
    """The secret in environment variable ``name``: set, not empty, valid UTF-8."""
    value = os.environ.get(name)
    if not value:
        raise SecretError(f"environment variable {name} is not set or empty")
    try:
        value.encode("utf-8")  # a non-UTF-8 byte arrives as a lone surrogate
    except UnicodeEncodeError:
        raise SecretError(f"environment variable {name} is not valid UTF-8 text") from None
    return Secret(value)


def _strip_one_newline(value: str) -> str:
    """Drop the newline an editor or ``echo`` adds; keep any other whitespace (it may be the secret)."""
    if value.endswith("\r\n"):
        return value[:-2]
    if value.endswith("\n"):
        return value[:-1]
    return value
