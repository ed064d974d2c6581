"""A real Knot DNS (Debian's ``knot``, 3.2) serving one zone on a free loopback port, updatable with a
TSIG key (RFC 2136): the authoritative server the kit's ``dns`` recovery step updates.

The zone has an SOA, an NS and ``node.<zone> A 127.0.0.1`` (everything runs on loopback, so records
that tell servers apart are SRV), plus the caller's records. One ACL allows updates signed with the
key and nothing else. Updates go to the journal and the zone file, so they outlive a restart; the
server can be stopped and started again on the same port ("DNS server down during the step").

knotd runs in the foreground as the ``knot`` user when started as root (it needs no privilege for a
high port); its config, the only file besides ``key_file`` holding the secret, is 0600.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tierwatch.clients.dns_update import TsigKey
from tierwatch.config.secrets import Secret

from .ports import free_port
from .process import ManagedProcess, Stack, StackError, wait_for

HOST = "127.0.0.1"
OS_USER = "knot"
KEY_NAME = "tierwatch-recovery."
KEY_ALGORITHM = "hmac-sha256"


@dataclass
class KnotServer:
    """A started knotd and how to reach and update it."""

    name: str
    port: int
    zone: str
    key_name: str
    key_algorithm: str
    key_file: Path  # the base64 secret and a newline, mode 0600 (what ``secret_file`` names)
    process: ManagedProcess
    dir: Path
    config: Path
    control_socket: Path
    ttl: int
    stack: Stack = field(repr=False)
    argv: list[str] = field(default_factory=list, repr=False)
    user: str | None = None

    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``: where queries and updates go."""
        return (HOST, self.port)

    @property
    def server(self) -> str:
        """``127.0.0.1:port``, as the config's ``service_discovery.server`` writes it."""
        return f"{HOST}:{self.port}"

    def tsig_key(self) -> TsigKey:
        """The key updates must be signed with (the secret read from ``key_file``)."""
        secret = self.key_file.read_text().strip()
        return TsigKey(self.key_name, self.key_algorithm, Secret(secret))

    def running(self) -> bool:
        return self.process.running()

    def stop(self) -> None:
        """Stop knotd gracefully (the journal and zone file keep every update); idempotent."""
        self.process.stop()

    def start(self, ready_timeout: float = 15.0) -> None:
        """Start knotd again on the same port and data; waits until it answers. No-op while running."""
        if self.process.running():
            return
        self.process = self.stack.spawn(self.name, self.argv, cwd=self.dir, user=self.user)
        _wait_answering(self, ready_timeout)

    def restart(self, ready_timeout: float = 15.0) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start(ready_timeout)

    def knotc(self, *args: str, timeout: float = 15.0) -> str:
        """Run ``knotc ARGS`` against this server's control socket; its output. Raises StackError."""
        argv = [_binary("knotc"), "-c", str(self.config), "-s", str(self.control_socket), *args]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"knotc {args[0] if args else ''} did not finish within {timeout:g}s") from None
        if done.returncode != 0 or "error:" in done.stdout:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-10:])
            raise StackError(f"knotc {' '.join(args)} failed with code {done.returncode}:\n{tail}")
        return done.stdout

    def set_rrset(self, owner: str, rdtype: str, values: Iterable[str], ttl: int | None = None) -> None:
        """Replace the RRset by hand, as an operator would with knotc (no TSIG, no prerequisite): the
        "someone changed the record" case. ``owner`` relative to the zone or absolute; empty
        ``values`` deletes the RRset; ``ttl`` defaults to the zone's. Names in ``values`` are stored as
        written: unlike zone files and updates, knotc does not lower-case them, and Knot compares an
        update's prerequisite in lower case, so a capital letter makes a record no prerequisite matches."""
        fqdn = owner if owner.endswith(".") else f"{owner}.{self.zone}"
        self.knotc("zone-begin", self.zone)
        try:
            try:
                self.knotc("zone-unset", self.zone, fqdn, rdtype)
            except StackError as exc:
                if "no such" not in str(exc):  # no such node / record: nothing to remove
                    raise
            for value in values:
                self.knotc("zone-set", self.zone, fqdn, str(self.ttl if ttl is None else ttl), rdtype, value)
            self.knotc("zone-commit", self.zone)
        except BaseException:
            try:
                self.knotc("zone-abort", self.zone)
            except StackError:
                pass
            raise


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise StackError(f"{name} not found; install the Debian packages knot and knot-dnsutils")
    return found


def _os_user() -> str | None:
    """knotd's user: ``knot`` when running as root (and it exists), else whoever runs the lab."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return None
    return OS_USER


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _zone_text(zone: str, records: Sequence[str], ttl: int) -> str:
    lines = [
        f"$ORIGIN {zone}",
        f"$TTL {ttl}",
        f"@ IN SOA node.{zone} hostmaster.{zone} 1 60 60 3600 {ttl}",
        f"@ IN NS node.{zone}",
        "node IN A 127.0.0.1",
        *records,
    ]
    return "\n".join(lines) + "\n"


def _config_text(
    *, port: int, zone: str, secret: str, zone_dir: Path, db_dir: Path, run_dir: Path, socket: Path
) -> str:
    return f"""\
# written by tierwatch_lab.stack.knot
server:
    rundir: "{run_dir}"
    listen: {HOST}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    identity: ""
    version: ""
    nsid: ""

control:
    listen: "{socket}"

log:
  - target: stderr
    server: info
    control: info
    zone: debug  # the ACL and TSIG verdicts on each update (a refused key shows up only here)

database:
    storage: "{db_dir}"
    journal-db-max-size: 64M
    kasp-db-max-size: 16M
    timer-db-max-size: 16M
    catalog-db-max-size: 16M

key:
  - id: {KEY_NAME}
    algorithm: {KEY_ALGORITHM}
    secret: {secret}

acl:
  - id: update-with-key
    key: {KEY_NAME}
    action: update

zone:
  - domain: {zone}
    storage: "{zone_dir}"
    file: "zone.txt"
    acl: update-with-key
    journal-content: changes
    zonefile-sync: 0
"""


def _private_file(path: Path, text: str, user: str | None) -> None:
    """Write ``text`` to a new file that only its owner (``user`` when given) can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    _chown(path, user)


def start_knot(
    stack: Stack,
    name: str = "dns",
    zone: str = "tierwatch.test.",
    records: Sequence[str] = (),
    ttl: int = 5,
    *,
    port: int | None = None,
    ready_timeout: float = 15.0,
) -> KnotServer:
    """Start knotd serving ``zone`` with a fresh TSIG key (``KEY_NAME``, hmac-sha256) allowed to update
    it. ``records``: extra zone-file lines, names relative to the zone (e.g.
    ``"primary.main-db 5 IN SRV 0 0 6379 node.tierwatch.test."``). Stopped with the stack."""
    zone = zone if zone.endswith(".") else f"{zone}."
    port = port or free_port()
    user = _os_user()
    base = stack.directory(name, owner=user)
    zone_dir = stack.directory(name, "zones", owner=user)
    db_dir = stack.directory(name, "db", owner=user)
    run_dir = stack.directory(name, "run", owner=user)
    socket = run_dir / "knot.sock"
    secret = base64.b64encode(secrets.token_bytes(32)).decode()

    key_file = base / "tsig.key"
    _private_file(key_file, secret + "\n", None)
    config = base / "knot.conf"
    text = _config_text(
        port=port, zone=zone, secret=secret, zone_dir=zone_dir, db_dir=db_dir, run_dir=run_dir, socket=socket
    )
    _private_file(config, text, user)
    zone_file = zone_dir / "zone.txt"
    zone_file.write_text(_zone_text(zone, records, ttl))
    _chown(zone_file, user)

    argv = [_binary("knotd"), "-c", str(config)]
    process = stack.spawn(name, argv, cwd=base, user=user)
    server = KnotServer(
        name=name,
        port=port,
        zone=zone,
        key_name=KEY_NAME,
        key_algorithm=KEY_ALGORITHM,
        key_file=key_file,
        process=process,
        dir=base,
        config=config,
        control_socket=socket,
        ttl=ttl,
        stack=stack,
        argv=argv,
        user=user,
    )
    _wait_answering(server, ready_timeout)
    return server


def _wait_answering(server: KnotServer, timeout: float) -> None:
    """Wait until knotd answers the zone's SOA authoritatively."""
    query = dns.message.make_query(server.zone, dns.rdatatype.SOA)

    def answers() -> bool:
        server.process.check_alive()
        if "failed to load zone" in server.process.log_tail(50):  # knotd runs on, answering SERVFAIL
            raise StackError(f"knotd {server.name} could not load zone {server.zone}")
        try:
            response = dns.query.udp(query, HOST, timeout=0.5, port=server.port)
        except (dns.exception.DNSException, OSError):
            return False
        return response.rcode() == dns.rcode.NOERROR and bool(response.flags & dns.flags.AA)

    try:
        wait_for(answers, timeout, f"knotd {server.name} to answer on port {server.port}")
    except StackError as exc:
        raise StackError(f"{exc}\n{server.process.log_tail()}") from None
