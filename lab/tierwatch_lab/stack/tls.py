"""TLS for the lab: a self-signed certificate for 127.0.0.1 with a chosen expiry, and an HAProxy TLS
frontend that serves it (answering /health itself): an https target for the tests and the live stack."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .ports import free_port, port_open
from .process import Stack, wait_for

NOT_AFTER = dt.datetime(2031, 5, 17, 12, 0, 0, tzinfo=dt.UTC)


def self_signed(directory: Path, not_after: dt.datetime = NOT_AFTER) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid until ``not_after`` (PEM cert+key for HAProxy, and
    the cert alone as CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierwatch-test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
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


def start_tls_frontend(stack: Stack, not_after: dt.datetime = NOT_AFTER) -> tuple[str, Path]:
    """An HAProxy TLS frontend answering /health itself, with a self-signed certificate valid until
    ``not_after``; returns its health URL and the certificate (as a CA file)."""
    bundle, ca = self_signed(stack.directory("tls"), not_after)
    port = free_port()
    cfg = stack.path("tls", "haproxy.cfg")
    cfg.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n"
        f"frontend tls\n  bind 127.0.0.1:{port} ssl crt {bundle}\n  monitor-uri /health\n"
    )
    proc = stack.spawn("haproxy-tls", ["haproxy", "-db", "-f", str(cfg)])
    wait_for(lambda: proc.check_alive() or port_open(port), 10, "TLS frontend")
    return f"https://127.0.0.1:{port}/health", ca
