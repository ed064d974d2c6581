"""``--web.config.file`` (exporter-toolkit format): TLS and basic auth on the exporter and the recovery
service, checked with real TLS clients, real processes and a real Prometheus scraping over TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tierwatch.web_config import BasicAuthChecker, WebConfigError, load_web_config
from tierwatch_lab.stack import Stack, wait_for
from tierwatch_lab.stack.alertmanager import start_alertmanager
from tierwatch_lab.stack.http import start_http_backend
from tierwatch_lab.stack.prometheus import ScrapeJob, start_prometheus
from tierwatch_lab.stack.tierwatch import TierwatchProcess, start_exporter, start_recovery

from helpers import metric_value as value
from recovery_fixtures import alert, app_cluster, payload

USER, PASSWORD = "prometheus", "scr4pe-Pa55word"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


@dataclass
class Pki:
    """PEM files: a server CA and a server cert for 127.0.0.1; a client CA and a client cert; a client
    cert from another CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def _ca(directory: Path, name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(
    directory: Path,
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path],
    server: bool,
) -> tuple[Path, Path]:
    ca_cert, ca_key, _ = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path = directory / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, _write_key(key, directory / f"{name}.key")


def make_pki(directory: Path) -> Pki:
    """A fresh set of certificates in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    server_ca, client_ca, other_ca = (_ca(directory, n) for n in ("server-ca", "client-ca", "other-ca"))
    server = _leaf(directory, "server", server_ca, server=True)
    client = _leaf(directory, "client", client_ca, server=False)
    stranger = _leaf(directory, "stranger", other_ca, server=False)
    return Pki(server_ca[2], *server, client_ca[2], *client, *stranger)


def write_web_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tls_client(pki: Pki, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A client context trusting only the server CA (with a client certificate when given)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def https(process: TierwatchProcess) -> str:
    return f"https://127.0.0.1:{process.port}"


def ready_over_tls(
    context: ssl.SSLContext, auth: tuple[str, str] | None
) -> Callable[[TierwatchProcess], bool]:
    def ready(process: TierwatchProcess) -> bool:
        response = httpx.get(https(process) + "/ready", verify=context, auth=auth, timeout=2)
        return response.status_code == 200

    return ready


def app_config(stack: Stack, write: Callable[[dict[str, Any]], Path]) -> Path:
    """An exporter config watching one real app server."""
    backend = start_http_backend(stack, "es-1")
    return write(
        {
            "monitor": {"interval": "1s", "timeout": "500ms"},
            "clusters": [app_cluster([("es-1", "primary", backend.url)])],
        }
    )


# --- the file ---------------------------------------------------------------------------------------


def problems_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    return caught.value.problems


def test_bad_web_configs_are_refused_with_file_line_and_key_path(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "web.yml"
    plain_password = "not-a-hash-Secret"
    problems = problems_of(
        tmp_path,
        "tls_server_config:\n"
        f"  cert_file: {pki.server_cert}\n"
        "  client_auth_type: RequireAnyClientCert\n"
        "  min_version: TLS13\n"
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"
        "  bogus: 1\n"
        "http_server_config:\n"
        "  headers:\n"
        "    X-Frame-Options: allow\n"
        "    Server: tierwatch\n"
        "basic_auth_users:\n"
        f"  alice: {plain_password}\n"
        f"  bob: {HASH}\n"
        f"  bob: {HASH}\n"
        "rate_limit: {interval: 1s, burst: 2}\n"
        "extra: 1\n",
    )
    text = "\n".join(problems)
    expected = [
        f"{path}:3: tls_server_config.client_auth_type: expected one of",
        f"{path}:6: tls_server_config.cipher_suites: not supported",
        f"{path}:7: tls_server_config.bogus: unknown key",
        f"{path}:2: tls_server_config.key_file: required",
        f"{path}:2: tls_server_config.min_version: must not be above max_version",
        f"{path}:10: http_server_config.headers.X-Frame-Options: expected one of deny, sameorigin",
        f"{path}:11: http_server_config.headers.Server: cannot be set",
        f"{path}:13: basic_auth_users.alice: expected a bcrypt hash",
        f"{path}:15: basic_auth_users.bob: given twice (first on line 14)",
        f"{path}:16: rate_limit: not supported",
        f"{path}:17: extra: unknown key",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), f"missing {line!r} in:\n{text}"
    assert len(problems) == len(expected), text
    assert plain_password not in text and HASH not in text

    assert problems_of(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n",
    ) == [
        f"{path}:2: tls_server_config.client_ca_file: required with client_auth_type "
        "RequireAndVerifyClientCert"
    ]
    missing = problems_of(tmp_path, "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n")
    assert missing == [  # relative to the web config's directory
        f"{path}:2: tls_server_config.cert_file: {tmp_path / 'nope.crt'}: No such file or directory",
        f"{path}:3: tls_server_config.key_file: {tmp_path / 'nope.key'}: No such file or directory",
    ]
    wrong_key = problems_of(
        tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.client_key}\n"
    )
    assert "KEY_VALUES_MISMATCH" in wrong_key[0] or "mismatch" in wrong_key[0].lower(), wrong_key
    assert problems_of(tmp_path, "- a\n") == [f"{path}:1: (top): expected a mapping"]
    assert problems_of(tmp_path, "basic_auth_users: {a: [x\n")[0].startswith(f"{path}:2: not valid YAML")

    # an empty file is a valid web config: plain HTTP, no auth (as in exporter-toolkit)
    path.write_text("")
    empty = load_web_config(path)
    assert empty.tls is None and not empty.users and empty.context is None
    good = write_web_config(
        path,
        {
            "tls_server_config": {"cert_file": "pki/server.crt", "key_file": "pki/server.key"},
            "http_server_config": {"http2": False, "headers": {"X-Content-Type-Options": "nosniff"}},
            "basic_auth_users": {USER: HASH},
        },
    )
    loaded = load_web_config(good)
    assert loaded.tls is not None and loaded.tls.cert_file == pki.server_cert
    assert loaded.context is not None and loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert HASH not in repr(loaded)


def test_serve_with_a_bad_web_config_exits_nonzero_without_echoing_it(
    tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    config = write_config({"clusters": [app_cluster([("es-1", "primary", "http://127.0.0.1:9/")])]})
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: hunter2-plaintext\ntls_server_config:\n  cert_fil: x\n")
    for command in ("serve", "recover"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tierwatch",
                command,
                "--config",
                str(config),
                "--web.config.file",
                str(web),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert f"{web}:2: basic_auth_users.alice: expected a bcrypt hash" in result.stderr
        assert f"{web}:4: tls_server_config.cert_fil: unknown key" in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


def test_checker_caches_successes_only_and_treats_unknown_users_alike() -> None:
    checker = BasicAuthChecker({USER: HASH.encode()})

    async def timed(user: str, password: bytes, times: int = 1) -> tuple[bool, float]:
        started = time.monotonic()
        results = [await checker.check(user, password) for _ in range(times)]
        assert len(set(results)) == 1
        return results[0], time.monotonic() - started

    async def run() -> None:
        ok, first = await timed(USER, PASSWORD.encode())
        assert ok
        ok, again = await timed(USER, PASSWORD.encode(), 20)
        assert ok and again < first, "successful checks are remembered"
        assert not await checker.check(USER, b"wrong")
        ok, unknown = await timed("mallory", PASSWORD.encode())
        assert not ok
        assert unknown > first / 3, "an unknown user costs a bcrypt check too"
        assert not await checker.check(USER, PASSWORD.encode() + b"x" * 80)  # past bcrypt's 72 bytes
        ok, wrong_again = await timed(USER, b"wrong")
        assert not ok and wrong_again > first / 3, "failures are not remembered"

    asyncio.run(run())
    assert len(checker._passed) == 1
    assert PASSWORD.encode() not in b"".join(checker._passed)


# --- the exporter -----------------------------------------------------------------------------------


def test_exporter_over_tls_with_basic_auth(
    stack: Stack, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    pki = make_pki(tmp_path / "pki")
    web = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
            "basic_auth_users": {USER: HASH},
        },
    )
    client = tls_client(pki)
    exporter = start_exporter(
        stack,
        app_config(stack, write_config),
        extra_args=["--web.config.file", str(web)],
        ready_check=ready_over_tls(client, (USER, PASSWORD)),
    )
    base = https(exporter)
    for path in ("/metrics", "/health", "/ready", "/"):
        for auth in (None, (USER, "wrong"), ("mallory", PASSWORD), (USER, "")):
            refused = httpx.get(base + path, verify=client, auth=auth, timeout=5)
            assert refused.status_code == 401, (path, auth)
            assert refused.headers["www-authenticate"].startswith("Basic")
            assert refused.headers["x-content-type-options"] == "nosniff"
    bearer = httpx.get(base + "/metrics", verify=client, headers={"Authorization": "Bearer x"}, timeout=5)
    assert bearer.status_code == 401
    metrics = httpx.get(base + "/metrics", verify=client, auth=(USER, PASSWORD), timeout=5)
    assert metrics.status_code == 200
    assert metrics.headers["x-content-type-options"] == "nosniff"
    assert value(metrics.text, "tierwatch_up", target="es-1") == 1
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "python_info",
        "python_gc_objects_collected_total",
    ):
        assert value(metrics.text, name) is not None, name
    openmetrics = httpx.get(
        base + "/metrics",
        verify=client,
        auth=(USER, PASSWORD),
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert openmetrics.text.count("# EOF") == 1 and openmetrics.text.rstrip().endswith("# EOF")
    assert "process_open_fds" in openmetrics.text

    # TLS only: plain HTTP is not answered, and a client that does not trust the CA gets no connection
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{exporter.port}/metrics", auth=(USER, PASSWORD), timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(base + "/metrics", auth=(USER, PASSWORD), timeout=5)
    # the default min_version (TLS12) lets a TLS 1.2 client in
    tls12 = tls_client(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert httpx.get(base + "/health", verify=tls12, auth=(USER, PASSWORD), timeout=5).status_code == 200


def test_exporter_requires_a_client_certificate_from_the_client_ca(
    stack: Stack, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    pki = make_pki(tmp_path / "pki")
    web = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": str(pki.client_ca),
                "min_version": "TLS13",
            }
        },
    )
    with_cert = tls_client(pki, (pki.client_cert, pki.client_key))
    exporter = start_exporter(
        stack,
        app_config(stack, write_config),
        extra_args=["--web.config.file", str(web)],
        ready_check=ready_over_tls(with_cert, None),
    )
    base = https(exporter)
    response = httpx.get(base + "/metrics", verify=with_cert, timeout=5)
    assert response.status_code == 200 and value(response.text, "tierwatch_up", target="es-1") == 1
    tls12 = tls_client(pki, (pki.client_cert, pki.client_key))
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(httpx.ConnectError):  # below min_version TLS13
        httpx.get(base + "/metrics", verify=tls12, timeout=5)
    for context in (tls_client(pki), tls_client(pki, (pki.stranger_cert, pki.stranger_key))):
        # TLS 1.3: the server refuses the client's certificate after the handshake, at the first read
        with pytest.raises(httpx.HTTPError):
            httpx.get(base + "/metrics", verify=context, timeout=5)


# --- the recovery service ---------------------------------------------------------------------------


def recovery_config(tmp_path: Path, auth: dict[str, Any], tls: dict[str, str] | None = None) -> Path:
    settings: dict[str, Any] = {"state_dir": str(tmp_path / "state"), "auth": auth}
    if tls:
        settings["tls"] = tls
    config = tmp_path / "recover.yml"
    clusters = [app_cluster([("es-1", "primary", "http://127.0.0.1:9/")])]
    config.write_text(yaml.safe_dump({"clusters": clusters, "recovery": settings}, sort_keys=False))
    return config


def test_recovery_webhook_metrics_and_audit_over_tls_with_basic_auth(stack: Stack, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    password_file = tmp_path / "webhook-password"
    password_file.write_text(PASSWORD + "\n")
    config = recovery_config(tmp_path, {"basic": {"username": USER, "password_file": str(password_file)}})
    web = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
            "basic_auth_users": {USER: HASH},
        },
    )
    client = tls_client(pki)
    service = start_recovery(
        stack,
        config,
        extra_args=["--web.config.file", str(web)],
        ready_check=ready_over_tls(client, (USER, PASSWORD)),
    )
    base = https(service)
    body = payload(alert("AppInstanceDown", {"tier": "app", "cluster": "web", "target": "es-1"}))
    accepted = httpx.post(base + "/webhook", json=body, verify=client, auth=(USER, PASSWORD), timeout=10)
    assert accepted.status_code == 200 and accepted.json()["status"] == "recorded"
    refused = httpx.post(base + "/webhook", json=body, verify=client, auth=(USER, "wrong"), timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    audit = httpx.get(base + "/audit", verify=client, auth=(USER, PASSWORD), timeout=10)
    assert audit.status_code == 200 and any(e["event"] == "alert_accepted" for e in audit.json())
    assert httpx.get(base + "/audit", verify=client, timeout=10).status_code == 401
    metrics = httpx.get(base + "/metrics", verify=client, auth=(USER, PASSWORD), timeout=10).text
    assert value(metrics, "tierwatch_recovery_notifications_total", result="accepted") == 1
    assert value(metrics, "tierwatch_recovery_notifications_total", result="unauthorized") == 1
    for name in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert value(metrics, name) is not None, name


def test_recovery_refuses_a_bearer_token_behind_basic_auth_users(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("a-bearer-token-Secret\n")
    config = recovery_config(tmp_path, {"bearer_token_file": str(token)})
    web = write_web_config(tmp_path / "web.yml", {"basic_auth_users": {USER: HASH}})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierwatch",
            "recover",
            "--config",
            str(config),
            "--web.config.file",
            str(web),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "recovery.auth must be basic auth with a user and password that basic_auth_users accepts" in (
        result.stderr
    )
    assert "a-bearer-token-Secret" not in result.stderr


def test_recovery_tls_setting_still_serves_https(stack: Stack, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}
    config = recovery_config(tmp_path, {"bearer_token_file": str(token)}, tls)
    client = tls_client(pki)
    service = start_recovery(stack, config, ready_check=ready_over_tls(client, None))
    body = payload(alert("AppInstanceDown", {"tier": "app", "cluster": "web", "target": "es-1"}))
    headers = {"Authorization": "Bearer t0ken"}
    response = httpx.post(https(service) + "/webhook", json=body, verify=client, headers=headers, timeout=10)
    assert response.status_code == 200
    # recovery.tls and a web config's tls_server_config together: refused, naming both
    web = write_web_config(tmp_path / "web.yml", {"tls_server_config": tls})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tierwatch",
            "recover",
            "--config",
            str(config),
            "--web.config.file",
            str(web),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"recovery.tls and tls_server_config in {web} are both set" in result.stderr


# --- Prometheus -------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_exporter_over_tls_with_basic_auth(
    stack: Stack, tmp_path: Path, write_config: Callable[[dict[str, Any]], Path]
) -> None:
    pki = make_pki(tmp_path / "pki")
    web = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
            "basic_auth_users": {USER: HASH},
        },
    )
    exporter = start_exporter(
        stack,
        app_config(stack, write_config),
        extra_args=["--web.config.file", str(web)],
        ready_check=ready_over_tls(tls_client(pki), (USER, PASSWORD)),
    )
    scrape = {
        "scheme": "https",
        "tls_config": {"ca_file": str(pki.ca)},
        "basic_auth": {"username": USER, "password": PASSWORD},
    }
    wrong = {**scrape, "basic_auth": {"username": USER, "password": "wrong"}}
    prometheus = start_prometheus(
        stack,
        [
            ScrapeJob("tierwatch", [exporter.address], options=scrape),
            ScrapeJob("wrong-password", [exporter.address], options=wrong),
        ],
    )
    wait_for(lambda: prometheus.value('up{job="tierwatch"}') == 1, 30, "the exporter scraped over TLS")
    assert prometheus.value('tierwatch_up{job="tierwatch",target="es-1"}') == 1
    assert (prometheus.value('process_open_fds{job="tierwatch"}') or 0) > 0

    def wrong_password_target() -> dict[str, Any] | None:
        active = prometheus.api("targets")["activeTargets"]
        found = [t for t in active if t["labels"]["job"] == "wrong-password" and t["health"] == "down"]
        return found[0] if found else None

    target = wait_for(wrong_password_target, 30, "the wrong-password job to fail")
    assert "401" in target["lastError"]


def test_alertmanager_and_prometheus_reach_the_recovery_service_over_tls_with_basic_auth(
    stack: Stack, tmp_path: Path
) -> None:
    """The recovery service's two real clients: Alertmanager posts to /webhook and Prometheus scrapes
    /metrics, each over TLS (trusting only the CA) with basic auth from a password file."""
    pki = make_pki(tmp_path / "pki")
    password_file = tmp_path / "webhook-password"
    password_file.write_text(PASSWORD + "\n")
    config = recovery_config(tmp_path, {"basic": {"username": USER, "password_file": str(password_file)}})
    web = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
            "basic_auth_users": {USER: HASH},
        },
    )
    service = start_recovery(
        stack,
        config,
        extra_args=["--web.config.file", str(web)],
        ready_check=ready_over_tls(tls_client(pki), (USER, PASSWORD)),
    )
    client_settings = {
        "tls_config": {"ca_file": str(pki.ca)},
        "basic_auth": {"username": USER, "password_file": str(password_file)},
    }
    manager = start_alertmanager(
        stack,
        yaml.safe_dump(
            {
                "route": {"receiver": "recovery", "group_by": ["alertname", "cluster"], "group_wait": "1s"},
                "receivers": [
                    {
                        "name": "recovery",
                        "webhook_configs": [
                            {"url": https(service) + "/webhook", "http_config": client_settings}
                        ],
                    }
                ],
            }
        ),
    )
    manager.post_alerts(
        [{"labels": {"alertname": "AppInstanceDown", "tier": "app", "cluster": "web", "target": "es-1"}}]
    )
    prometheus = start_prometheus(
        stack,
        [ScrapeJob("tierwatch-recovery", [service.address], options={"scheme": "https", **client_settings})],
    )
    accepted = 'tierwatch_recovery_notifications_total{job="tierwatch-recovery",result="accepted"}'
    wait_for(lambda: (prometheus.value(accepted) or 0) >= 1, 60, "Alertmanager's post, scraped by Prometheus")
    assert prometheus.value('up{job="tierwatch-recovery"}') == 1
    assert (prometheus.value('process_open_fds{job="tierwatch-recovery"}') or 0) > 0
    assert not prometheus.value('tierwatch_recovery_notifications_total{result="unauthorized"}')
    audit = httpx.get(https(service) + "/audit", verify=tls_client(pki), auth=(USER, PASSWORD), timeout=10)
    [received] = [e for e in audit.json() if e["event"] == "alert_accepted"]
    assert received["alert"] == "AppInstanceDown"
