"""The exporter-toolkit web configuration file (``--web.config.file``): TLS on the listener and HTTP
basic auth (bcrypt hashes) in front of every path, for ``tierwatch serve`` and ``tierwatch recover``.

The format is the Prometheus exporter-toolkit's (docs/web-configuration.md in prometheus/exporter-toolkit);
tierwatch implements the subset listed in README "TLS and basic auth" and refuses the rest by name. The
file is read once, at start. Problems are ``FILE:LINE: key.path: expectation`` and never quote a value
of the file (a hash, a header) nor a password.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_FILE_BYTES = 1024 * 1024
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# exporter-toolkit's headers, with the values it allows where it restricts them
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
# exporter-toolkit settings tierwatch does not implement: refused by name rather than ignored
NOT_SUPPORTED = {
    "tls_server_config.cert": "inline certificates are not supported; use cert_file",
    "tls_server_config.key": "inline keys are not supported; use key_file",
    "tls_server_config.client_ca": "inline CAs are not supported; use client_ca_file",
    "tls_server_config.client_allowed_sans": "not supported; use a dedicated client CA instead",
    "tls_server_config.cipher_suites": "not supported (OpenSSL's defaults for TLS 1.2 are used)",
    "tls_server_config.prefer_server_cipher_suites": "not supported",
    "tls_server_config.curve_preferences": "not supported",
    "rate_limit": "not supported",
}
KNOWN_KEYS = {
    "": ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
    "tls_server_config": (
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    ),
    "http_server_config": ("http2", "headers"),
}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_MAX_PASSWORD = 72  # bytes; bcrypt ignores (or, from bcrypt 5, refuses) the rest
# the bcrypt hash (cost 10) of a random password nobody kept: an unknown user costs one bcrypt check
# too, so timing does not tell which user names exist
_DUMMY_HASH = b"$2b$10$A9hR4RzBrdn0zCShgTFYgOClLePbdpmbDRC3bkAxXR1SSKXkAu7na"
REALM = "tierwatch"


class WebConfigError(ValueError):
    """The web config cannot be used; ``problems`` lists every problem, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class TlsServerConfig:
    """``tls_server_config``: the listener's certificate, client-certificate policy and versions."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"

    def ssl_context(self) -> ssl.SSLContext:
        """A server SSLContext (raises OSError or ssl.SSLError if a file cannot be used)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        # an encrypted key would make OpenSSL prompt on the terminal: an empty password fails instead
        context.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
        context.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
        context.set_alpn_protocols(["http/1.1"])
        return context


@dataclass(frozen=True)
class WebConfig:
    """A loaded web config; ``source`` names where it came from (a file, or ``recovery.tls``)."""

    source: str
    tls: TlsServerConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_tls(cls, source: str, tls: TlsServerConfig) -> WebConfig:
        """A web config with TLS only (raises WebConfigError if the files cannot be used)."""
        try:
            context = tls.ssl_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WebConfigError([f"{source}: cannot use the certificate and key: {_reason(exc)}"]) from None
        return cls(source, tls, context=context)

    def protect(self, app: App, on_unauthorized: Callable[[str], None] | None = None) -> App:
        """``app`` behind this config's basic auth and response headers (``app`` itself if none)."""
        if not self.users and not self.headers:
            return app
        return BasicAuthApp(app, self, on_unauthorized)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate the web config at ``path``; raises WebConfigError listing every problem."""
    path = Path(path)
    root = _compose(path)
    reader = _Reader(str(path))
    top = reader.mapping(root, "") if root is not None else {}
    tls: TlsServerConfig | None = None
    users: dict[str, bytes] = {}
    headers: list[tuple[str, str]] = []
    if top is not None:
        if "tls_server_config" in top:
            tls = reader.tls(top["tls_server_config"], path.parent)
        if "http_server_config" in top:
            headers = reader.http_server_config(top["http_server_config"])
        if "basic_auth_users" in top:
            users = reader.users(top["basic_auth_users"])
    context = None
    if tls is not None and not reader.problems:
        try:
            context = tls.ssl_context()
        except (OSError, ssl.SSLError, ValueError) as exc:
            line = reader.lines.get("tls_server_config.cert_file", 0)
            reader.problems.append(
                f"{path}:{line}: tls_server_config: cannot use cert_file, key_file or client_ca_file: "
                f"{_reason(exc)}"
            )
    if reader.problems:
        raise WebConfigError(reader.problems)
    return WebConfig(str(path), tls, users, tuple(headers), context)


def _reason(exc: BaseException) -> str:
    """Why a file could not be used, without its content (OpenSSL reasons and errno texts only)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "TLS error"
    if isinstance(exc, OSError):
        return f"{exc.strerror or 'cannot read'}: {exc.filename}" if exc.filename else exc.strerror or "error"
    return type(exc).__name__


def _compose(path: Path) -> yaml.Node | None:
    """The file's YAML node tree (for line numbers), bounded in size and depth."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise WebConfigError([f"{path}: cannot read the web config: {exc.strerror}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise WebConfigError([f"{path}: larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WebConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise WebConfigError([f"{path}{line}: not valid YAML: {exc.problem or 'syntax error'}"]) from None
    except yaml.YAMLError:
        raise WebConfigError([f"{path}: not valid YAML"]) from None
    except RecursionError:
        raise WebConfigError([f"{path}: nested too deeply"]) from None


class _Reader:
    """Walks the node tree, collecting problems with their line and key path."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []
        self.lines: dict[str, int] = {}
        self._seen: set[int] = set()

    def problem(self, node: yaml.Node, keypath: str, message: str) -> None:
        self.problems.append(f"{self.source}:{node.start_mark.line + 1}: {keypath or '(top)'}: {message}")

    def mapping(self, node: yaml.Node, keypath: str) -> dict[str, yaml.Node] | None:
        """The mapping's values by key, after checking its keys are known and given once."""
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, keypath, "expected a mapping")
            return None
        if id(node) in self._seen:
            self.problem(node, keypath, "YAML aliases are not supported")
            return None
        self._seen.add(id(node))
        known = KNOWN_KEYS.get(keypath)
        values: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str) or key_node.tag == "tag:yaml.org,2002:null":
                self.problem(key_node, keypath, "keys must be strings")
                continue
            where = f"{keypath}.{key}" if keypath else key
            if key in values:
                first = values[key].start_mark.line + 1
                self.problem(key_node, where, f"given twice (first on line {first})")
                continue
            if known is not None and key not in known:
                self.problem(key_node, where, f"unknown key; expected one of {', '.join(known)}")
                continue
            if where in NOT_SUPPORTED:
                self.problem(key_node, where, NOT_SUPPORTED[where])
                continue
            values[key] = value_node
            self.lines[where] = key_node.start_mark.line + 1
        return values

    def string(self, node: yaml.Node, keypath: str, choices: Mapping[str, Any] | None = None) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" or not node.value:
            self.problem(node, keypath, "expected a non-empty string")
            return None
        if choices is not None and node.value not in choices:
            self.problem(node, keypath, f"expected one of {', '.join(choices)}")
            return None
        return str(node.value)

    def tls(self, node: yaml.Node, directory: Path) -> TlsServerConfig | None:
        values = self.mapping(node, "tls_server_config")
        if values is None:
            return None
        files: dict[str, Path] = {}
        for key in ("cert_file", "key_file", "client_ca_file"):
            if key in values:
                name = self.string(values[key], f"tls_server_config.{key}")
                if name is not None:
                    files[key] = directory / name  # relative to the web config, as exporter-toolkit does
                    try:
                        files[key].open("rb").close()
                    except OSError as exc:
                        self.problem(values[key], f"tls_server_config.{key}", f"{files[key]}: {exc.strerror}")
            elif key != "client_ca_file":
                self.problem(node, f"tls_server_config.{key}", "required")
        settings: dict[str, str] = {}
        for key, choices, default in (
            ("client_auth_type", CLIENT_AUTH_TYPES, "NoClientCert"),
            ("min_version", TLS_VERSIONS, "TLS12"),
            ("max_version", TLS_VERSIONS, "TLS13"),
        ):
            chosen = (
                self.string(values[key], f"tls_server_config.{key}", choices) if key in values else default
            )
            settings[key] = chosen or default
        auth = settings["client_auth_type"]
        if auth != "NoClientCert" and "client_ca_file" not in files and "client_ca_file" not in values:
            self.problem(node, "tls_server_config.client_ca_file", f"required with client_auth_type {auth}")
        if auth == "NoClientCert" and "client_ca_file" in files:
            self.problem(
                values["client_ca_file"],
                "tls_server_config.client_ca_file",
                "set without a client_auth_type that verifies client certificates",
            )
        if TLS_VERSIONS[settings["min_version"]] > TLS_VERSIONS[settings["max_version"]]:
            self.problem(node, "tls_server_config.min_version", "must not be above max_version")
        if "cert_file" not in files or "key_file" not in files:
            return None
        return TlsServerConfig(
            files["cert_file"],
            files["key_file"],
            auth,
            files.get("client_ca_file"),
            settings["min_version"],
            settings["max_version"],
        )

    def http_server_config(self, node: yaml.Node) -> list[tuple[str, str]]:
        values = self.mapping(node, "http_server_config")
        if values is None:
            return []
        http2 = values.get("http2")
        if http2 is not None and not (isinstance(http2, yaml.ScalarNode) and http2.tag.endswith(":bool")):
            # accepted for compatibility; tierwatch answers HTTP/1.1 only, which every client falls back to
            self.problem(http2, "http_server_config.http2", "expected true or false")
        if "headers" not in values:
            return []
        headers = self.mapping(values["headers"], "http_server_config.headers") or {}
        found = []
        for name, value in headers.items():
            keypath = f"http_server_config.headers.{name}"
            if name not in HEADERS:
                self.problem(value, keypath, f"cannot be set; expected one of {', '.join(HEADERS)}")
                continue
            text = self.string(value, keypath, dict.fromkeys(HEADERS[name]) if HEADERS[name] else None)
            if text is not None:
                if any(ord(c) < 32 or ord(c) == 127 for c in text):
                    self.problem(value, keypath, "must not contain control characters")
                    continue
                found.append((name, text))
        return found

    def users(self, node: yaml.Node) -> dict[str, bytes]:
        values = self.mapping(node, "basic_auth_users")
        users: dict[str, bytes] = {}
        for name, value in (values or {}).items():
            keypath = f"basic_auth_users.{name}"
            if ":" in name or not name:
                self.problem(value, "basic_auth_users", "a user name must be non-empty and without ':'")
                continue
            hashed = value.value if isinstance(value, yaml.ScalarNode) else None
            if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
                # never quote the value: it may be a plain password written where a hash belongs
                self.problem(value, keypath, "expected a bcrypt hash ($2y$10$... from htpasswd -nBC 10)")
                continue
            users[name] = hashed.encode()
        return users


class BasicAuthChecker:
    """Checks user/password pairs against bcrypt hashes. A bcrypt check costs ~50-250 ms of CPU, so
    checks run one at a time in a thread of their own (like exporter-toolkit's mutex), and the pairs
    that passed are remembered, keyed by an HMAC with a per-process key (no password kept in memory)."""

    def __init__(self, users: Mapping[str, bytes], cache_size: int = 1024):
        self.users = dict(users)
        self.cache_size = cache_size
        self._key = secrets.token_bytes(32)
        self._passed: OrderedDict[bytes, None] = OrderedDict()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")

    def _cache_key(self, user: bytes, hashed: bytes, password: bytes) -> bytes:
        message = b"".join(len(part).to_bytes(4, "big") + part for part in (user, hashed, password))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check_now(self, user: str, password: bytes) -> bool:
        """The check itself, blocking (bcrypt); ``check`` is the event loop's way in."""
        hashed = self.users.get(user)
        if len(password) > BCRYPT_MAX_PASSWORD:
            return False
        ok = bcrypt.checkpw(password, hashed if hashed is not None else _DUMMY_HASH)
        return ok and hashed is not None

    async def check(self, user: str, password: bytes) -> bool:
        """True if ``password`` is ``user``'s; remembered when it is, so a scraper pays bcrypt once."""
        hashed = self.users.get(user)
        key = self._cache_key(user.encode(), hashed or b"", password)
        if hashed is not None and key in self._passed:
            self._passed.move_to_end(key)
            return True
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, self.check_now, user, password)
        if ok:
            self._passed[key] = None
            while len(self._passed) > self.cache_size:
                self._passed.popitem(last=False)
        return ok


def basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    """(user, password) of a ``Basic`` Authorization header, or None if it is not one."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


class BasicAuthApp:
    """An ASGI app in front of another: adds the configured response headers and, when users are
    configured, answers 401 (with ``WWW-Authenticate: Basic``) to any request without a valid user."""

    def __init__(self, app: App, web: WebConfig, on_unauthorized: Callable[[str], None] | None = None):
        self.app = app
        self.checker = BasicAuthChecker(web.users) if web.users else None
        self.headers = [(k.lower().encode(), v.encode()) for k, v in web.headers]
        self.on_unauthorized = on_unauthorized or (lambda _path: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.headers:
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        if self.checker is not None and not await self._authorized(scope):
            self.on_unauthorized(scope["path"])
            body = b"unauthorized\n"
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", f'Basic realm="{REALM}"'.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            return
        await self.app(scope, receive, send_with_headers)

    async def _authorized(self, scope: Scope) -> bool:
        assert self.checker is not None
        authorization = None
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                authorization = bytes(value).decode("latin-1")
                break
        credentials = basic_credentials(authorization)
        if credentials is None:
            return False
        return await self.checker.check(*credentials)
