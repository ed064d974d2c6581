"""HAProxy load balancers started from the machine's haproxy binary, with a runtime API socket."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, port_open
from .process import ManagedProcess, Stack, wait_for
from .rsyslog import SyslogTarget


@dataclass
class HAProxy:
    """A started HAProxy with one HTTP frontend, one backend of app servers and a stats socket."""

    name: str
    port: int
    stats_socket: Path
    config_path: Path
    process: ManagedProcess
    host: str = "127.0.0.1"
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        """The LB's own health URL (answered by HAProxy itself via monitor-uri)."""
        return f"http://{self.host}:{self.port}/health"

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` of HAProxy's built-in Prometheus exporter (``/metrics``), if it has one."""
        return None if self.metrics_port is None else f"{self.host}:{self.metrics_port}"

    def command(self, line: str) -> str:
        """Run one runtime API command and return its output."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()


def render_config(
    name: str,
    port: int,
    stats_socket: Path,
    servers: Sequence[tuple[str, int]],
    backend: str = "be_app",
    check_interval_ms: int = 1000,
    bind: str = "127.0.0.1",
    server_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    log: SyslogTarget | None = None,
) -> str:
    """An HAProxy config: frontend on ``bind:port`` naming itself in X-Served-By, one checked backend
    of ``servers`` (name, port) on ``server_host``; with ``metrics_port``, a frontend ``fe_metrics``
    on ``bind:metrics_port`` serving HAProxy's built-in Prometheus exporter at ``/metrics``; with
    ``log``, every request logged (``option httplog``) to that syslog collector."""
    lines = [
        "global",
        f"  stats socket {stats_socket} mode 600 level admin",
        "  stats timeout 2m",
        *log_lines(log, "httplog"),
        "  mode http",
        "  timeout connect 1s",
        "  timeout client 30s",
        "  timeout server 30s",
        "  option redispatch",
        "  retries 2",
        "frontend fe_web",
        f"  bind {bind}:{port}",
        "  monitor-uri /health",
        # The one line that lets tierwatch tell which LB of the pair serves the VIP:
        f"  http-after-response set-header X-Served-By {name}",
        f"  default_backend {backend}",
        f"backend {backend}",
        "  balance roundrobin",
        "  option httpchk GET /health",
        f"  default-server check inter {check_interval_ms}ms fall 2 rise 1",
    ]
    lines += [f"  server {server} {server_host}:{sport} weight 100" for server, sport in servers]
    if metrics_port is not None:
        lines += metrics_frontend(bind, metrics_port)
    return "\n".join(lines) + "\n"


def log_lines(log: SyslogTarget | None, option: str) -> list[str]:
    """The end of ``global`` and the start of ``defaults``: HAProxy's native syslog to ``log`` (its
    collector, stack/rsyslog.py) under the tag that names this LB, and the request log format
    ``option`` (``httplog``, ``tcplog``); only ``defaults`` without ``log``. Connections that send
    nothing (port checks such as the lab's readiness probes) are not logged (``dontlognull``)."""
    if log is None:
        return ["defaults"]
    return [f"  log {log.address} len 4096 local0", f"  log-tag {log.tag}", "defaults", "  log global",
            f"  option {option}", "  option dontlognull"]  # fmt: skip


def metrics_frontend(bind: str, port: int) -> list[str]:
    """Config lines of a frontend that serves HAProxy's Prometheus exporter (built in, ``USE_PROMEX``)
    at ``/metrics`` on ``bind:port``: request rate, 5xx, response/queue time and retries per
    frontend, backend and server. Its own requests never reach a backend."""
    return [
        "frontend fe_metrics",
        f"  bind {bind}:{port}",
        "  mode http",
        "  no log",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  http-request return status 404",
    ]


def start_haproxy(
    stack: Stack,
    name: str,
    servers: Sequence[tuple[str, int]],
    port: int | None = None,
    check_interval_ms: int = 1000,
    *,
    bind: str = "127.0.0.1",
    server_host: str = "127.0.0.1",
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
    metrics: bool = True,
    log: SyslogTarget | None = None,
) -> HAProxy:
    """Start HAProxy in the foreground (``-db``) and wait until the frontend and socket answer.

    ``bind`` is the frontend's address, ``server_host`` where the ``servers`` listen, ``host`` the
    address this process reaches the frontend on (the LB's ``url``), and ``prefix`` goes before the
    command line (``["ip", "netns", "exec", NS]`` runs HAProxy in a network namespace). With
    ``metrics`` (the default) it also serves its Prometheus exporter on a free port
    (``metrics_address``); with ``log``, it logs every request to that syslog collector.
    """
    port = port or free_port()
    metrics_port = free_port() if metrics else None
    directory = stack.directory("haproxy", name)
    sock = directory / "admin.sock"
    cfg = directory / "haproxy.cfg"
    cfg.write_text(
        render_config(
            name,
            port,
            sock,
            servers,
            check_interval_ms=check_interval_ms,
            bind=bind,
            server_host=server_host,
            metrics_port=metrics_port,
            log=log,
        )
    )
    proc = stack.spawn(name, [*prefix, "haproxy", "-db", "-f", str(cfg)])
    lb = HAProxy(name, port, sock, cfg, proc, host, metrics_port)

    def ready() -> bool:
        proc.check_alive()
        ports = [port] if metrics_port is None else [port, metrics_port]
        return all(port_open(p, host) for p in ports) and sock.exists()

    wait_for(ready, 10, f"haproxy {name}")
    return lb


@dataclass
class Vip:
    """A forwarder playing the pair's virtual IP (see stack/tcp_forwarder.py)."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def start_vip(stack: Stack, lbs: Sequence[HAProxy], port: int | None = None) -> Vip:
    """Serve a VIP on ``port`` held by the first LB of ``lbs`` that is alive (VRRP priority order)."""
    import sys

    port = port or free_port()
    argv = [sys.executable, "-m", "tierwatch_lab.stack.tcp_forwarder", "--port", str(port)]
    for lb in lbs:
        argv += ["--backend", str(lb.port)]
    proc = stack.spawn("vip", argv)
    wait_for(lambda: proc.check_alive() or port_open(port), 10, f"VIP forwarder on port {port}")
    return Vip(port, proc)


def render_write_backend(
    stats_socket: Path,
    port: int,
    backend: str,
    servers: Sequence[tuple[str, int]],
    log: SyslogTarget | None = None,
) -> str:
    """An HAProxy config with one tcp-mode frontend and a backend of servers named after the targets
    of a Redis or PostgreSQL cluster: the write address apps use, which the recovery service points
    at the current primary (every other server in maintenance). With ``log``, every connection is
    logged (``option tcplog``) to that syslog collector."""
    lines = [
        "global",
        f"  stats socket {stats_socket} mode 600 level admin",
        "  stats timeout 2m",
        *log_lines(log, "tcplog"),
        "  mode tcp",
        "  timeout connect 1s",
        "  timeout client 1m",
        "  timeout server 1m",
        "frontend fe_write",
        f"  bind 127.0.0.1:{port}",
        f"  default_backend {backend}",
        f"backend {backend}",
        # no retry against a dead server (HAProxy waits up to a second between retries): a client's
        # attempt fails at once and its next one reaches the server the recovery service made ready
        "  retries 0",
    ]
    lines += [f"  server {name} 127.0.0.1:{sport}" for name, sport in servers]
    return "\n".join(lines) + "\n"


def start_write_lb(
    stack: Stack,
    name: str,
    backend: str,
    servers: Sequence[tuple[str, int]],
    primary: str | None = None,
    log: SyslogTarget | None = None,
) -> HAProxy:
    """Start a write LB (see render_write_backend); with ``primary``, only that server is ready."""
    port = free_port()
    directory = stack.directory("haproxy", name)
    sock = directory / "admin.sock"
    cfg = directory / "haproxy.cfg"
    cfg.write_text(render_write_backend(sock, port, backend, servers, log))
    proc = stack.spawn(name, ["haproxy", "-db", "-f", str(cfg)])
    wait_for(lambda: proc.check_alive() or (port_open(port) and sock.exists()), 10, f"haproxy {name}")
    lb = HAProxy(name, port, sock, cfg, proc)
    if primary is not None:
        for server, _ in servers:
            lb.command(f"set server {backend}/{server} state {'ready' if server == primary else 'maint'}")
    return lb
