"""Authentication of webhook requests: bearer token or basic auth, compared in constant time."""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass

from ..config import Secret
from ..config.recovery import AuthSettings
from ..config.secrets import read_secret_file


@dataclass(frozen=True)
class Authenticator:
    """Checks an ``Authorization`` header against the configured credential."""

    scheme: str
    expected: bytes

    @classmethod
    def from_settings(cls, auth: AuthSettings, secret: Secret | None = None) -> Authenticator:
        """The authenticator for ``auth`` with ``secret``, the credential ``load_config`` read
        (``LoadedConfig.auth_secret()``); without it the file is read now, by the same reader."""
        if auth.bearer_token_file:
            token = secret or read_secret_file(auth.bearer_token_file, "bearer token file")
            return cls("Bearer", token.reveal().encode())
        if auth.basic is None:
            raise ValueError("recovery.auth: expected bearer_token_file or basic")
        password = (secret or read_secret_file(auth.basic.password_file, "password file")).reveal()
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
