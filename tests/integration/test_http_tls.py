"""HTTPS app targets: the certificate's expiry is exported, verified against a CA file or not."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.recovery.actions import load_action
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.ports import port_open

from action_fixtures import make_context
from helpers import metric_value as value

NOT_AFTER = dt.datetime(2031, 5, 17, 12, 0, 0, tzinfo=dt.UTC)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (PEM cert+key for HAProxy, and the cert alone as CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierwatch-test")])
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    bundle, ca = directory / "server.pem", directory / "ca.pem"
    bundle.write_bytes(cert_pem + key_pem)
    ca.write_bytes(cert_pem)
    return bundle, ca


def start_tls_frontend(stack: Stack) -> tuple[str, Path]:
    """An HAProxy TLS frontend answering /health itself, with a self-signed certificate; returns its
    health URL and the certificate (as a CA file)."""
    bundle, ca = self_signed(stack.directory("tls"))
    port = free_port()
    cfg = stack.path("tls", "haproxy.cfg")
    cfg.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n"
        f"frontend tls\n  bind 127.0.0.1:{port} ssl crt {bundle}\n  monitor-uri /health\n"
    )
    proc = stack.spawn("haproxy-tls", ["haproxy", "-db", "-f", str(cfg)])
    wait_for(lambda: proc.check_alive() or port_open(port), 10, "TLS frontend")
    return f"https://127.0.0.1:{port}/health", ca


def test_certificate_expiry_with_and_without_verification(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    url, ca = start_tls_frontend(stack)
    loaded = make_config(
        [
            {
                "name": "web",
                "tier": "app",
                "targets": [
                    {"name": "verified", "region": "r", "url": url, "tls_ca_file": str(ca)},
                    {"name": "unverified", "region": "r", "url": url, "tls_skip_verify": True},
                    {"name": "untrusted", "region": "r", "url": url},
                ],
            }
        ],
        interval="10s",
        timeout="5s",  # about certificates, not speed: a loaded machine may take long to verify
    )
    monitor = Monitor(loaded, EventLog(stream=io.StringIO()))

    async def go() -> None:
        await monitor.run_round()
        await monitor.close()

    asyncio.run(go())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TierwatchCollector(monitor))
    text = generate_latest(registry).decode()
    expected = NOT_AFTER.timestamp()
    assert value(text, "tierwatch_up", target="verified") == 1
    assert value(text, "tierwatch_http_tls_cert_expiry_timestamp_seconds", target="verified") == expected
    assert value(text, "tierwatch_up", target="unverified") == 1
    assert value(text, "tierwatch_http_tls_cert_expiry_timestamp_seconds", target="unverified") == expected
    assert value(text, "tierwatch_up", target="untrusted") == 0
    assert value(text, "tierwatch_probe_failures_total", target="untrusted", reason="protocol") == 1


def test_restart_refuses_a_healthy_self_signed_target(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """The live check honours the target's TLS options: a healthy server with a self-signed
    certificate and tls_skip_verify answers, so it is not restarted (nor is it with tls_ca_file)."""
    url, ca = start_tls_frontend(stack)
    marker = stack.path("restarted")
    targets = [
        {"name": "skip", "region": "r", "url": url, "tls_skip_verify": True},
        {"name": "ca", "region": "r", "url": url, "tls_ca_file": str(ca)},
    ]
    loaded = make_config([{"name": "web", "tier": "app", "targets": targets}])
    command = ["sh", "-c", f"echo restarted >> {marker}"]
    settings = ClusterRecovery(restart_commands={"skip": command, "ca": command})
    for name in ("skip", "ca"):
        ctx, recorder = make_context(loaded, "web", {"target": name}, settings=settings)
        outcome = asyncio.run(load_action("restart_instance").run(ctx))
        assert outcome.status == "refused" and outcome.detail == f"{name} answers; not restarting", outcome
        assert recorder.point_of_no_return_calls == 0
    assert not marker.exists()
