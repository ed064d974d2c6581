"""Authentication of webhook requests: bearer token or basic auth, compared in constant time."""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass
from pathlib import Path

from ..config import Secret
from ..config.recovery import AuthSettings


def _read_secret(path: str) -> Secret:
    value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    if not value:
        raise ValueError(f"secret file {path} is empty")
    return Secret(value)


@dataclass(frozen=True)
class Authenticator:
    """Checks an ``Authorization`` header against the configured credential."""

    scheme: str
    expected: bytes

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Authenticator:
        """Read the credential files once, at start-up (errors name the file, never the secret)."""
        if auth.bearer_token_file:
            return cls("Bearer", _read_secret(auth.bearer_token_file).reveal().encode())
        if auth.basic is None:
            raise ValueError("recovery.auth: expected bearer_token_file or basic")
        password = _read_secret(auth.basic.password_file).reveal()
        token = base64.b64encode(f"{auth.basic.username}:{password}".encode()).decode()
        return cls("Basic", token.encode())

    def check(self, header: str | None) -> bool:
        """True if the header carries the expected credential."""
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != self.scheme.lower():
            # still compare, so a wrong scheme costs the same time as a wrong secret
            hmac.compare_digest(self.expected, self.expected[::-1])
            return False
        return hmac.compare_digest(value.strip().encode(), self.expected)
