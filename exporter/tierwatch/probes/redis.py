"""Redis probe: one persistent connection per target, one pipelined round trip per probe: INFO, and
CONFIG GET of the write-fencing settings (min-replicas-*) and of ``save`` (are RDB snapshots scheduled:
redis_persistence.py) until the server refuses them.

A primary also reports, for each of its replicas, the replication lag (attributed to the replica's
own target), and reads the cluster's configured queues in a second round trip (see queues.py). With
``backup.heartbeat_key`` it SETs that key to the Unix time in one more round trip of one command; a
refused write is reported by its own gauge and never fails the probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, parse_url
from redis.exceptions import AuthenticationError, InvalidResponse, NoPermissionError, ResponseError

from ..clients.redis import connection_options
from ..clients.redis_bounded import MAX_REPLY_BYTES, BoundedHiredisParser, ReplyTooLarge
from ..config import Secret
from ..metric_catalog import (
    BACKUP_HEARTBEAT_WRITE,
    CACHE_HITS,
    CACHE_MISSES,
    REPLICATION_LAG_BYTES,
    REPLICATION_LAG_SECONDS,
    metric,
)
from .base import Observation, Probe, ProbeFailure, TargetInfo, classify_failure, remaining
from .queues import LookupCount, read_queues
from .redis_persistence import SAVE_CONFIG, observe_last_save, observe_persistence, save_configured

CLIENT_NAME = "tierwatch"
INFO_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication")
Command = tuple[Any, ...]
# The write-fencing settings; INFO only says whether both are set. Dropped once the server refuses it
# (a monitoring ACL user without +config|get, a renamed CONFIG).
FENCING_CONFIG: Command = ("CONFIG", "GET", "min-replicas-*")
FENCING_SETTINGS = {"min-replicas-to-write": "to_write", "min-replicas-max-lag": "max_lag"}
MAX_ROUNDTRIP_BYTES = 4 * MAX_REPLY_BYTES  # all replies of one pipelined round trip together
MIN_SOCKET_TIMEOUT = 0.001  # past the deadline: redis-py reads a socket timeout of 0 as "none" when sending

CONNECTED_REPLICAS = metric(
    "tierwatch_redis_connected_replicas",
    "gauge",
    "Replicas connected to this server (INFO connected_slaves).",
    section="redis",
)
UNKNOWN_REPLICAS = metric(
    "tierwatch_redis_unknown_replicas",
    "gauge",
    "Connected replicas whose address matches no target of the cluster (their lag is not attributed).",
    section="redis",
)
REPL_OFFSET = metric(
    "tierwatch_redis_replication_offset_bytes",
    "gauge",
    "The server's replication offset (master_repl_offset on a primary, slave_repl_offset on a replica).",
    section="redis",
)
MASTER_LINK_UP = metric(
    "tierwatch_redis_master_link_up",
    "gauge",
    "On a replica: 1 if the link to its master is up, else 0.",
    section="redis",
)
MASTER_LAST_IO = metric(
    "tierwatch_redis_master_last_io_seconds",
    "gauge",
    "On a replica: seconds since the last interaction with its master (master_last_io_seconds_ago).",
    section="redis",
)
MASTER_SYNC = metric(
    "tierwatch_redis_master_sync_in_progress",
    "gauge",
    "On a replica: 1 while a full synchronisation from the master is in progress.",
    section="redis",
)
EVICTED = metric(
    "tierwatch_redis_evicted_keys_total", "counter", "Keys evicted because of maxmemory.", section="redis"
)
EXPIRED = metric(
    "tierwatch_redis_expired_keys_total",
    "counter",
    "Keys deleted because their TTL expired.",
    section="redis",
)
MEMORY_USED = metric(
    "tierwatch_redis_memory_used_bytes", "gauge", "Memory allocated by Redis (used_memory).", section="redis"
)
MEMORY_MAX = metric(
    "tierwatch_redis_memory_max_bytes", "gauge", "The maxmemory setting; 0 means no limit.", section="redis"
)
MEMORY_RSS = metric(
    "tierwatch_redis_memory_rss_bytes",
    "gauge",
    "Memory the operating system gives the Redis process (used_memory_rss).",
    section="redis",
)
FRAGMENTATION = metric(
    "tierwatch_redis_memory_fragmentation_ratio",
    "gauge",
    "used_memory_rss / used_memory (mem_fragmentation_ratio): above 1 the allocator holds memory Redis "
    "does not use; below 1 part of Redis is swapped out.",
    section="redis",
)
CLIENTS = metric(
    "tierwatch_redis_connected_clients", "gauge", "Client connections (excluding replicas).", section="redis"
)
BLOCKED = metric(
    "tierwatch_redis_blocked_clients",
    "gauge",
    "Clients waiting in a blocking call (BLPOP, XREAD, ...).",
    section="redis",
)
MAX_CLIENTS = metric("tierwatch_redis_max_clients", "gauge", "The maxclients setting.", section="redis")
REJECTED = metric(
    "tierwatch_redis_rejected_connections_total",
    "counter",
    "Connections rejected because of maxclients.",
    section="redis",
)
CONNECTIONS = metric(
    "tierwatch_redis_connections_received_total",
    "counter",
    "Connections accepted by the server.",
    section="redis",
)
COMMANDS = metric(
    "tierwatch_redis_commands_processed_total",
    "counter",
    "Commands processed by the server.",
    section="redis",
)
RDB_CHANGES = metric(
    "tierwatch_redis_rdb_changes_since_last_save",
    "gauge",
    "Writes since the last RDB save (what a crash would lose without AOF).",
    section="redis",
)
WRITE_FENCING = metric(
    "tierwatch_redis_write_fencing",
    "gauge",
    "On a master: 1 if min-replicas-to-write and min-replicas-max-lag are both set, so that the master "
    "refuses writes without enough good replicas (INFO shows min_slaves_good_slaves), else 0.",
    section="redis",
)
MIN_REPLICAS_GOOD = metric(
    "tierwatch_redis_min_replicas_good",
    "gauge",
    "On a master with write fencing: replicas lagging at most min-replicas-max-lag (min_slaves_good_slaves).",
    section="redis",
)
MIN_REPLICAS_TO_WRITE = metric(
    "tierwatch_redis_min_replicas_to_write",
    "gauge",
    "On a master: the min-replicas-to-write setting (0 = off); absent where CONFIG GET is not allowed.",
    section="redis",
)
MIN_REPLICAS_MAX_LAG = metric(
    "tierwatch_redis_min_replicas_max_lag_seconds",
    "gauge",
    "On a master: the min-replicas-max-lag setting (0 = off); absent where CONFIG GET is not allowed.",
    section="redis",
)
UPTIME = metric(
    "tierwatch_redis_uptime_seconds",
    "gauge",
    "Seconds since the server started (drops on a restart).",
    section="redis",
)

ROLES = {"master": "primary", "slave": "replica"}


def parse_info(raw: bytes | str) -> dict[str, str]:
    """``INFO`` text as a flat ``field -> value`` mapping (section headers dropped)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and line[0] != "#":
            key, sep, value = line.partition(":")
            if sep:
                fields[key] = value
    return fields


def parse_pairs(value: str) -> dict[str, str]:
    """``ip=1.2.3.4,port=6380,state=online`` as a mapping."""
    out: dict[str, str] = {}
    for part in value.split(","):
        key, _, item = part.partition("=")
        out[key] = item
    return out


def redis_failure(exc: BaseException) -> ProbeFailure:
    """A secret-free ProbeFailure for an exception from the Redis client."""
    if isinstance(exc, ProbeFailure):
        return exc
    if isinstance(exc, AuthenticationError | NoPermissionError):
        reason = "auth"
    elif isinstance(exc, InvalidResponse):  # garbage, or a reply over the byte cap
        reason = "protocol"
    else:
        reason = classify_failure(exc)
    return ProbeFailure(reason, type(exc).__name__)


class RedisLink:
    """One persistent connection to a Redis-protocol server, used for pipelined round trips.

    ``timeout`` bounds connecting and each read of a connection; while a probe runs (``guarded``),
    ``deadline`` is that probe's, and the round trips' connect and read timeouts are the time left
    until it. Not safe for concurrent use; the monitor runs one probe of a target at a time.
    """

    def __init__(self, url: str, password: Secret | None, timeout: float, *, tls_skip_verify: bool = False):
        kwargs = parse_url(url)
        self._connection_class: type[AbstractConnection] = kwargs.pop("connection_class", Connection)
        kwargs.pop("password", None)
        self._kwargs = kwargs
        self._password = password
        self._timeout = timeout
        self._tls_skip_verify = tls_skip_verify
        self._conn: AbstractConnection | None = None
        self._dirty = False
        self.connects = 0
        self.deadline: float | None = None

    def _new_connection(self) -> AbstractConnection:
        options = connection_options(
            self._password,
            self._timeout,
            client_name=CLIENT_NAME,
            tls=self._connection_class is SSLConnection,
            tls_skip_verify=self._tls_skip_verify,
        )
        return self._connection_class(
            **self._kwargs,
            **options,
            driver_info=None,
        )

    async def roundtrip(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` in one write and read every reply; error replies come back as
        ResponseError values in place of their reply."""
        if self._dirty:
            await self.close()
        if self._conn is None:
            self._conn = self._new_connection()
        conn = self._conn
        timeout = (
            self._timeout if self.deadline is None else max(remaining(self.deadline), MIN_SOCKET_TIMEOUT)
        )
        conn.socket_timeout = conn.socket_connect_timeout = timeout
        if not conn.is_connected:
            self.connects += 1
            await conn.connect()
        self._dirty = True
        await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        parser = conn._parser if isinstance(conn._parser, BoundedHiredisParser) else None
        start = parser.bytes_read if parser else 0
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
            if parser and parser.bytes_read - start > MAX_ROUNDTRIP_BYTES:
                raise ReplyTooLarge(f"replies larger than {MAX_ROUNDTRIP_BYTES} bytes")
        self._dirty = False
        return replies

    async def close(self) -> None:
        """Close the connection (if any); the next round trip reconnects."""
        conn, self._conn, self._dirty = self._conn, None, False
        if conn is not None:
            try:
                await conn.disconnect(nowait=True)
            except Exception:  # noqa: BLE001 - closing must not fail
                conn._close()


async def guarded(link: RedisLink, deadline: float, work: Any) -> Any:
    """Await ``work`` (round trips on ``link``) by ``deadline``, an instant of the event loop's clock;
    on any failure close ``link`` and raise a ProbeFailure."""
    link.deadline = deadline
    try:
        async with asyncio.timeout_at(deadline):
            return await work
    except asyncio.CancelledError:
        await asyncio.shield(link.close())
        raise
    except Exception as exc:  # noqa: BLE001 - every client error is a probe failure, classified
        await link.close()
        raise redis_failure(exc) from None
    finally:
        link.deadline = None


class RedisProbe(Probe):
    """Probes one redis-server: role, replication, cache, clients, persistence, and queues on a primary."""

    def __init__(self, info: TargetInfo):
        super().__init__(info)
        self.link = RedisLink(
            info.target.url, info.password, info.timeout, tls_skip_verify=info.target.tls_skip_verify
        )
        self._info_command: Command = ("INFO",)
        self.config_refused = False
        self.lookups = LookupCount()  # the keyspace hits and misses of this probe's own queue reads
        self._raw_lookups: tuple[int, int] | None = None

    async def probe(self, deadline: float | None = None) -> Observation:
        return await guarded(self.link, self.deadline(deadline), self._probe())

    async def _probe(self) -> Observation:
        commands = [self._info_command]
        if not self.config_refused:
            commands += [FENCING_CONFIG, SAVE_CONFIG]
        reply, *config = await self.link.roundtrip(commands)
        if isinstance(reply, ResponseError):
            raise reply
        fields = parse_info(reply)
        self._discount_own_lookups(fields)
        self._choose_info_command(fields)
        observation = observe_info(fields, self.info)
        if config and observation.role == "primary":
            self._observe_fencing_config(config[0], observation)
        if len(config) > 1:
            configured = save_configured(config[1])
            if configured is None:
                self.config_refused = True
            else:
                observe_last_save(fields, configured, observation)
        if observation.role == "primary" and self.info.cluster.queues:
            await read_queues(self.link, self.info.cluster.queues, observation, time.time(), self.lookups)
        backup = self.info.cluster.backup
        if observation.role == "primary" and backup is not None and backup.heartbeat_key is not None:
            [written] = await self.link.roundtrip([("SET", backup.heartbeat_key, f"{time.time():.3f}")])
            # an error reply (NOPERM, READONLY, OOM) is this write's failure, not the probe's
            observation.add(BACKUP_HEARTBEAT_WRITE, 0 if isinstance(written, ResponseError) else 1)
        return observation

    def _observe_fencing_config(self, reply: Any, obs: Observation) -> None:
        """The min-replicas settings from CONFIG GET; a refusal stops asking for them."""
        if isinstance(reply, ResponseError) or not isinstance(reply, list | dict):
            self.config_refused = True
            return
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=False)
        settings = {}
        for key, value in pairs:
            name = key.decode() if isinstance(key, bytes) else str(key)
            text = value.decode() if isinstance(value, bytes) else str(value)
            if name in FENCING_SETTINGS and text.isdigit():
                settings[FENCING_SETTINGS[name]] = float(text)
        if "to_write" in settings:
            obs.add(MIN_REPLICAS_TO_WRITE, settings["to_write"])
        if "max_lag" in settings:
            obs.add(MIN_REPLICAS_MAX_LAG, settings["max_lag"])

    def _discount_own_lookups(self, fields: dict[str, str]) -> None:
        """Make the cache counters the server's less this probe's own queue reads (queues.py); when
        the server's counters went back (a restart, CONFIG RESETSTAT, another server at the address)
        the own count starts again with them. A read whose reply never arrived is not counted: the
        correction can fall short, never overshoot, so the counters never go back."""
        try:
            raw = (int(fields["keyspace_hits"]), int(fields["keyspace_misses"]))
        except (KeyError, ValueError):
            return
        if self._raw_lookups is not None and (raw[0] < self._raw_lookups[0] or raw[1] < self._raw_lookups[1]):
            self.lookups = LookupCount()
        self._raw_lookups = raw
        fields["keyspace_hits"] = str(max(0, raw[0] - self.lookups.hits))
        fields["keyspace_misses"] = str(max(0, raw[1] - self.lookups.misses))

    def _choose_info_command(self, fields: dict[str, str]) -> None:
        """From Redis 7 on, ask only for the sections used (INFO takes several sections)."""
        major = fields.get("redis_version", "0").partition(".")[0]
        if major.isdigit() and int(major) >= 7:
            self._info_command = ("INFO", *INFO_SECTIONS)

    async def close(self) -> None:
        await self.link.close()


def observe_info(fields: dict[str, str], info: TargetInfo) -> Observation:
    """Turn parsed INFO fields into an Observation."""
    role = ROLES.get(fields.get("role", ""))
    if role is None:
        raise ProbeFailure("protocol", "INFO has no known role")
    obs = Observation(role=role)
    _observe_replicas(fields, info, obs)
    if role == "replica":
        _observe_master_link(fields, obs)
        _add(obs, REPL_OFFSET, fields, "slave_repl_offset")
    else:
        _add(obs, REPL_OFFSET, fields, "master_repl_offset")
        # Redis prints min_slaves_good_slaves only when both min-replicas settings are non-zero,
        # exactly when it refuses writes short of good replicas.
        obs.add(WRITE_FENCING, 1.0 if "min_slaves_good_slaves" in fields else 0.0)
        _add(obs, MIN_REPLICAS_GOOD, fields, "min_slaves_good_slaves")
    for spec, key in (
        (CACHE_HITS, "keyspace_hits"),
        (CACHE_MISSES, "keyspace_misses"),
        (EVICTED, "evicted_keys"),
        (EXPIRED, "expired_keys"),
        (MEMORY_USED, "used_memory"),
        (MEMORY_MAX, "maxmemory"),
        (MEMORY_RSS, "used_memory_rss"),
        (FRAGMENTATION, "mem_fragmentation_ratio"),
        (CLIENTS, "connected_clients"),
        (BLOCKED, "blocked_clients"),
        (MAX_CLIENTS, "maxclients"),
        (REJECTED, "rejected_connections"),
        (CONNECTIONS, "total_connections_received"),
        (COMMANDS, "total_commands_processed"),
        (RDB_CHANGES, "rdb_changes_since_last_save"),
        (UPTIME, "uptime_in_seconds"),
    ):
        _add(obs, spec, fields, key)
    observe_persistence(fields, obs)
    return obs


def _add(obs: Observation, spec: Any, fields: dict[str, str], key: str) -> None:
    value = fields.get(key)
    if value is not None:
        try:
            obs.add(spec, float(value))
        except ValueError:
            pass


def _observe_master_link(fields: dict[str, str], obs: Observation) -> None:
    obs.add(MASTER_LINK_UP, 1.0 if fields.get("master_link_status") == "up" else 0.0)
    obs.add(MASTER_SYNC, 1.0 if fields.get("master_sync_in_progress") == "1" else 0.0)
    last_io = fields.get("master_last_io_seconds_ago", "-1")
    if last_io.lstrip("-").isdigit() and int(last_io) >= 0:
        obs.add(MASTER_LAST_IO, float(last_io))


def _observe_replicas(fields: dict[str, str], info: TargetInfo, obs: Observation) -> None:
    """Connected replicas: count them and attribute each one's lag to its own target."""
    count = int(fields.get("connected_slaves", "0") or 0)
    obs.add(CONNECTED_REPLICAS, count)
    own_offset = int(fields.get("master_repl_offset", "0") or 0)
    unknown = 0
    for index in range(count):
        line = fields.get(f"slave{index}")
        if line is None:
            continue
        replica = parse_pairs(line)
        peer = None
        if replica.get("port", "").isdigit():
            peer = info.peer_by_address(replica.get("ip", ""), int(replica["port"]))
        if peer is None or peer == info.name:
            unknown += 1
            continue
        offset = replica.get("offset", "")
        if offset.lstrip("-").isdigit():
            obs.add_for(peer, REPLICATION_LAG_BYTES, max(0, own_offset - int(offset)))
        lag = replica.get("lag", "")
        if lag.lstrip("-").isdigit() and int(lag) >= 0:
            obs.add_for(peer, REPLICATION_LAG_SECONDS, float(lag))
    obs.add(UNKNOWN_REPLICAS, unknown)
