"""HTTPS app targets: the certificate's expiry is exported, verified against a CA file or not."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import LoadedConfig
from tierwatch.config.recovery import ClusterRecovery
from tierwatch.events import EventLog
from tierwatch.metrics import TierwatchCollector
from tierwatch.monitor import Monitor
from tierwatch.recovery.actions import load_action
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.tls import NOT_AFTER, start_tls_frontend

from action_fixtures import make_context
from helpers import metric_value as value


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
