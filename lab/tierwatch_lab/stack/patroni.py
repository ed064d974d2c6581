"""A real Patroni cluster (PyPI's ``patroni``, etcd3 DCS) managing Debian's PostgreSQL on 127.0.0.1.

Each member is one Patroni process plus the PostgreSQL server it manages (its own data directory,
run as the ``postgres`` OS user like stack/postgres.py). The DCS is a lab etcd cluster (stack/etcd.py);
Patroni's ``etcd3`` DCS talks to its v3 gRPC-gateway JSON API. The PostgreSQL settings are the lab's
(``BASE_SETTINGS``: the same as the chain's topology, so benches compare like with like), the roles are
the lab's: ``tierwatch`` (pg_monitor, what the exporter uses) and the recovery service's admin role,
created once Patroni has bootstrapped the leader.

A member may run in a network namespace of its own (``nets``: stack/servernet.py), still at
127.0.0.1:<port> for everyone, so a drill or bench can cut it off (the primary-partition fault); it is
started first and leads.

Patroni starts its postmaster in a session of its own, so a SIGKILLed Patroni leaves PostgreSQL
running: ``kill``, ``pause``, ``resume`` and ``stop`` of a member reach the Patroni process group, the
postmaster and every postgres child (each in its own session too), and the Stack stops both.

The binary: ``$TIERWATCH_PATRONI``, else ``scripts/setup``'s virtualenv
(``${XDG_CACHE_HOME:-~/.cache}/tierwatch-patroni``), else ``patroni`` on PATH. As root, Patroni runs as
``postgres`` with CAP_DAC_READ_SEARCH (ambient), only so it can read a virtualenv under a 0700 home.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from psycopg import sql as pgsql

from .etcd import EtcdCluster
from .ports import free_port
from .postgres import (
    ADMIN_ROLE,
    BASE_SETTINGS,
    MONITOR_ROLE,
    OS_USER,
    REPLICATION_ROLE,
    SUPERUSER,
    _chown,
    child_pids,
    create_admin_role,
    pg_bin_dir,
)
from .process import ManagedProcess, Stack, StackError, wait_for
from .servernet import ServerNet

HOST = "127.0.0.1"
REWIND_ROLE = "tierwatch_rewind"
DEFAULT_TIMING = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
# the smallest values Patroni accepts (patroni/config.py: ttl >= 20, loop_wait >= 1, retry_timeout >= 3,
# loop_wait + 2 * retry_timeout <= ttl)
FASTEST_TIMING = {"ttl": 20, "loop_wait": 1, "retry_timeout": 3}
_REST_TIMEOUT = 2.0
_MAX_REST_BODY = 256 * 1024

HBA_LINES = [
    f"local   all          {SUPERUSER}                         trust",
    f"local   replication  {SUPERUSER}                         trust",
    "host    all          all                 127.0.0.1/32  scram-sha-256",
    "host    replication  all                 127.0.0.1/32  scram-sha-256",
]


def patroni_binary() -> str:
    """The patroni executable: $TIERWATCH_PATRONI, scripts/setup's virtualenv
    ($TIERWATCH_PATRONI_VENV or the cache's ``tierwatch-patroni``), or PATH."""
    env = os.environ.get("TIERWATCH_PATRONI")
    if env:
        if not os.access(env, os.X_OK):
            raise StackError(f"TIERWATCH_PATRONI={env} is not an executable")
        return env
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = Path(os.environ.get("TIERWATCH_PATRONI_VENV") or cache / "tierwatch-patroni") / "bin" / "patroni"
    if os.access(venv, os.X_OK):
        return str(venv)
    found = shutil.which("patroni")
    if found:
        return found
    raise StackError(
        f"patroni not found (looked at $TIERWATCH_PATRONI, {venv}, PATH); run scripts/setup, "
        "which installs patroni[etcd3,psycopg3] into its own virtualenv"
    )


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster running on ``data_dir`` (from postmaster.pid), if it still runs."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"postgres" in cmdline and str(data_dir).encode() in cmdline else None


def _signal_pids(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class PatroniProcess(ManagedProcess):
    """A Patroni process together with the PostgreSQL server it started (outside its process group)."""

    def __init__(self, name: str, argv: Sequence[str], *, data_dir: Path, **kwargs: Any):
        super().__init__(name, argv, **kwargs)
        self.data_dir = data_dir

    def postgres_pids(self) -> list[int]:
        """The postmaster and its children, postmaster first (empty if it does not run)."""
        postmaster = _postmaster_pid(self.data_dir)
        return [] if postmaster is None else [postmaster, *child_pids(postmaster)]

    def signal(self, sig: int) -> None:
        """``sig`` to Patroni's process group, the postmaster and each postgres child."""
        pids = self.postgres_pids()
        super().signal(sig)
        _signal_pids(pids, sig)

    def kill(self) -> None:
        """A dead node: freeze everything first (so Patroni cannot react), then SIGKILL it all."""
        pids = self.postgres_pids()
        super().signal(signal.SIGSTOP)
        _signal_pids(pids, signal.SIGSTOP)
        pids = list(dict.fromkeys([*pids, *self.postgres_pids()]))
        super().signal(signal.SIGKILL)
        _signal_pids(pids, signal.SIGKILL)
        if self.popen is not None:
            self._reap(5.0)
        self._wait_gone(pids)

    def stop(self, timeout: float = 20.0) -> None:
        """Patroni's own shutdown (SIGTERM: it stops PostgreSQL), then whatever PostgreSQL left is
        stopped too (fast shutdown, then SIGKILL)."""
        self.signal(signal.SIGCONT)
        super().stop(timeout)
        postmaster = _postmaster_pid(self.data_dir)
        if postmaster is not None:
            pids = [postmaster, *child_pids(postmaster)]
            _signal_pids(pids, signal.SIGCONT)
            _signal_pids([postmaster], signal.SIGINT)
            if not self._wait_gone([postmaster], 10.0):
                _signal_pids([postmaster, *child_pids(postmaster)], signal.SIGKILL)
            self._wait_gone(pids)

    @staticmethod
    def _wait_gone(pids: Sequence[int], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]:
                return True
            time.sleep(0.02)
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


@dataclass
class PatroniMember:
    """One member: Patroni's REST API and the PostgreSQL server it manages."""

    name: str
    pg_port: int
    rest_port: int
    base_dir: Path
    config_path: Path
    argv: list[str]
    env: dict[str, str]
    process: PatroniProcess | None = None
    launcher: list[str] = field(default_factory=list)  # argv prefix it runs under (``nets``)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir

    @property
    def rest_url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    def url(self, role: str = MONITOR_ROLE, password: str | None = None, dbname: str = "postgres") -> str:
        """A PostgreSQL URL of this member for ``role`` (with ``password`` only when given)."""
        auth = role if password is None else f"{role}:{password}"
        return f"postgresql://{auth}@{HOST}:{self.pg_port}/{dbname}"

    def connect(self, *, timeout: float = 5.0, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit superuser connection over the unix socket (caller closes it)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.pg_port, user=SUPERUSER, dbname="postgres",
            autocommit=True, connect_timeout=max(2, int(timeout)), **kwargs,
        )  # fmt: skip

    def scalar(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """The first column of the first row of a superuser query."""
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
        return row[0] if row else None

    def in_recovery(self) -> bool:
        return bool(self.scalar("SELECT pg_is_in_recovery()"))

    def rest(self, path: str, timeout: float = _REST_TIMEOUT) -> tuple[int, Any]:
        """GET a path of this member's REST API: (status, decoded JSON or None); bounded read."""
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", f"{self.rest_url}{path}") as response,
        ):
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _MAX_REST_BODY:
                    raise StackError(f"{self.name}{path}: answer over {_MAX_REST_BODY} bytes")
        try:
            return response.status_code, json.loads(body) if body else None
        except ValueError:
            return response.status_code, None

    def running(self) -> bool:
        return self.process is not None and self.process.running()

    def kill(self) -> None:
        """SIGKILL Patroni and its PostgreSQL (a dead node)."""
        if self.process is not None:
            self.process.kill()

    def pause(self) -> None:
        """SIGSTOP Patroni and its PostgreSQL."""
        if self.process is not None:
            self.process.pause()

    def resume(self) -> None:
        """SIGCONT Patroni and its PostgreSQL."""
        if self.process is not None:
            self.process.resume()

    def stop(self) -> None:
        """Graceful stop (Patroni shuts PostgreSQL down); what is left is stopped too."""
        if self.process is not None:
            self.process.stop()


@dataclass
class PatroniCluster:
    """A started Patroni cluster and the passwords of the roles the kit uses."""

    stack: Stack
    etcd: EtcdCluster
    scope: str
    namespace: str
    members: list[PatroniMember]
    monitor_password: str
    admin_password: str
    admin_role: str
    timing: dict[str, int] = field(default_factory=dict)
    # 0600 files holding the passwords (a tierwatch config's ``password_file``)
    monitor_password_file: Path | None = None
    admin_password_file: Path | None = None

    def member(self, name: str) -> PatroniMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)

    def status(self, ask_last: PatroniMember | None = None) -> dict[str, Any] | None:
        """Patroni's /cluster document, from the first member that answers (``ask_last`` last: a
        cut-off or paused member's REST API answers nothing and costs its whole timeout)."""
        for member in sorted(self.members, key=lambda m: m is ask_last):
            if not member.running():
                continue
            try:
                code, doc = member.rest("/cluster")
            except (httpx.HTTPError, StackError):
                continue
            if code == 200 and isinstance(doc, dict):
                return doc
        return None

    def leader(self, ask_last: PatroniMember | None = None) -> PatroniMember | None:
        """The member /cluster names leader and running, or None (``ask_last``: see ``status``)."""
        doc = self.status(ask_last)
        for entry in (doc or {}).get("members", []):
            if entry.get("role") == "leader" and entry.get("state") == "running":
                return self.member(entry["name"])
        return None

    def wait_leader(self, timeout: float = 60.0, not_: str | PatroniMember | None = None) -> PatroniMember:
        """Wait until a running leader (other than ``not_``) is named and its PostgreSQL takes writes."""
        excluded = not_.name if isinstance(not_, PatroniMember) else not_

        def elected() -> PatroniMember | None:
            leader = self.leader()
            if leader is None or leader.name == excluded:
                return None
            return leader if not leader.in_recovery() else None

        return wait_for(elected, timeout, f"a Patroni leader of {self.scope} other than {excluded}", 0.1)

    def wait_streaming(self, names: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        """Wait until each named member (default: all but the leader) is a streaming replica."""

        def streaming() -> bool:
            doc = self.status() or {}
            entries = {entry.get("name"): entry for entry in doc.get("members", [])}
            leader = next((n for n, e in entries.items() if e.get("role") == "leader"), None)
            wanted = names if names is not None else [m.name for m in self.members if m.name != leader]
            return leader is not None and all(
                entries.get(name, {}).get("state") == "streaming" for name in wanted
            )

        wait_for(streaming, timeout, f"replicas of {self.scope} streaming", 0.1)

    def start_member(self, member: PatroniMember | str) -> PatroniMember:
        """Start a member's Patroni again (same config, ports and data)."""
        if isinstance(member, str):
            member = self.member(member)
        if member.running():
            raise StackError(f"{member.name} is already running")
        member.process = _spawn(self.stack, member)
        return member


def _spawn(stack: Stack, member: PatroniMember) -> PatroniProcess:
    as_root = os.geteuid() == 0
    argv = member.argv
    if as_root:
        argv = [*member.launcher, "setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                # the switch cleared the parent-death signal process.py armed: arm it again
                "--pdeathsig=SIGKILL", "--", *argv]  # fmt: skip
    proc = PatroniProcess(
        member.name,
        argv,
        data_dir=member.data_dir,
        log_path=stack.path("logs", f"{member.name}.log"),
        cwd=member.base_dir,
        env=member.env,
    )
    stack.processes.append(proc)
    proc.start()
    return proc


def start_patroni_cluster(
    stack: Stack,
    etcd: EtcdCluster,
    size: int = 3,
    *,
    scope: str = "main-db",
    name_prefix: str = "pg-",
    ttl: int = 30,
    loop_wait: int = 10,
    retry_timeout: int = 10,
    maximum_lag_on_failover: int = 1048576,
    synchronous_mode: bool | str = False,
    settings: Mapping[str, str] | None = None,
    timeout: float = 120.0,
    nets: Mapping[str, ServerNet] | None = None,
) -> PatroniCluster:
    """Start ``size`` Patroni members (``pg-1``...) over ``etcd``, wait for a leader and streaming
    replicas, and create the monitor and admin roles on the leader. ``synchronous_mode``: Patroni's
    (``True``: one named synchronous standby; ``"quorum"``: ``ANY 1`` of the replicas). ``nets``: members
    (by name) run in that network namespace (as root), their REST and PostgreSQL ports exposed at
    127.0.0.1, reaching etcd and the other members there; they start first, and one of them leads."""
    nets = dict(nets or {})
    if nets and os.geteuid() != 0:
        raise StackError("Patroni members in network namespaces need root")
    binary = patroni_binary()
    namespace = f"/tierwatch-{stack.root.name}/"
    passwords = {role: secrets.token_urlsafe(18) for role in (SUPERUSER, REPLICATION_ROLE, REWIND_ROLE)}
    parameters = {k: v for k, v in BASE_SETTINGS.items() if k != "listen_addresses"}
    parameters.update(settings or {})
    timing = {"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry_timeout}
    members: list[PatroniMember] = []
    for index in range(1, size + 1):
        name = f"{name_prefix}{index}"
        base = stack.directory("patroni", name, owner=OS_USER)
        if len(str(base / ".s.PGSQL.65535")) > 100:
            raise StackError(f"stack path too long for a unix socket: {base}; use a shorter Stack base")
        net = nets.get(name)
        pg_port, rest_port = (net.expose(), net.expose()) if net else (free_port(), free_port())
        member = PatroniMember(
            name=name, pg_port=pg_port, rest_port=rest_port, base_dir=base, config_path=base / "patroni.yml",
            argv=[], env={}, launcher=net.launcher if net else [],
        )  # fmt: skip
        # in a namespace: loopback for its isolated clients, the veth address for everyone else (the
        # REST API binds one address: all of the namespace's)
        pg_hosts, rest_host = (",".join(net.listen), "0.0.0.0") if net else (HOST, HOST)
        hba = HBA_LINES + (
            [f"host    all          all                 {net.network}  scram-sha-256",
             f"host    replication  all                 {net.network}  scram-sha-256"]
            if net else []
        )  # fmt: skip
        config = {
            "scope": scope,
            "namespace": namespace,
            "name": name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{rest_host}:{member.rest_port}",
                "connect_address": f"{HOST}:{member.rest_port}",
            },
            "etcd3": {"hosts": [f"{HOST}:{m.client_port}" for m in etcd.members], "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    **timing,
                    "maximum_lag_on_failover": maximum_lag_on_failover,
                    "synchronous_mode": synchronous_mode,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"{pg_hosts}:{member.pg_port}",
                "connect_address": f"{HOST}:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(pg_bin_dir()),
                "pgpass": str(base / "pgpass"),
                "use_unix_socket": True,
                "pg_hba": hba,
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": passwords[SUPERUSER]},
                    "replication": {"username": REPLICATION_ROLE, "password": passwords[REPLICATION_ROLE]},
                    "rewind": {"username": REWIND_ROLE, "password": passwords[REWIND_ROLE]},
                },
                "parameters": {"unix_socket_directories": str(base)},
            },
        }
        member.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        member.config_path.chmod(0o600)  # it holds the passwords
        _chown(member.config_path)
        member.argv = [binary, str(member.config_path)]
        member.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        members.append(member)
    etcd_ports = [m.client_port for m in etcd.members]
    for name, net in nets.items():
        net.reach([*etcd_ports, *(p for m in members if m.name != name for p in (m.pg_port, m.rest_port))])
    cluster = PatroniCluster(
        stack=stack, etcd=etcd, scope=scope, namespace=namespace, members=members,
        monitor_password=secrets.token_urlsafe(18), admin_password="", admin_role="", timing=timing,
    )  # fmt: skip

    def alive() -> None:
        for member in members:
            if member.process is not None:
                member.process.check_alive()

    def led() -> PatroniMember | None:
        alive()
        leader = cluster.leader()
        return leader if leader is not None and (not nets or leader.name in nets) else None

    first = [m for m in members if m.name in nets]
    for member in first or members:
        member.process = _spawn(stack, member)
    leader = wait_for(led, timeout, f"Patroni cluster {scope} to bootstrap a leader", 0.2)
    for member in members:
        if member.process is None:
            member.process = _spawn(stack, member)
    wait_for(lambda: not leader.in_recovery(), timeout, f"{leader.name} to take writes", 0.1)
    _create_roles(cluster, leader)
    cluster.wait_streaming(timeout=timeout)
    return cluster


def _create_roles(cluster: PatroniCluster, leader: PatroniMember) -> None:
    with leader.connect() as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE pg_monitor").format(
                pgsql.Identifier(MONITOR_ROLE), pgsql.Literal(cluster.monitor_password)
            )
        )
    cluster.admin_role = ADMIN_ROLE
    cluster.admin_password = create_admin_role(leader)  # type: ignore[arg-type] - only .connect() is used
    secrets_dir = cluster.stack.directory("secrets")
    for attr, password in (("monitor", cluster.monitor_password), ("admin", cluster.admin_password)):
        path = secrets_dir / f"{cluster.scope}-{attr}"
        path.write_text(password + "\n")
        path.chmod(0o600)
        setattr(cluster, f"{attr}_password_file", path)
