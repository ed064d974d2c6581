"""What a Patroni member says about itself (GET /patroni) and about its cluster (GET /cluster).

Every read is bounded like ``clients.http``'s (it is its transport): one deadline for the whole
exchange, at most ``max_bytes`` of a body (a longer one is a failure, never parsed), JSON parsed only
from that, and every field checked for its type. A member that lies, stalls, sends garbage or too much
costs one bounded read and raises ``PatroniError``, the only exception here; its message is short and
never holds a body, a header, the URL or a credential.

Field meanings follow Patroni's ``api.py`` (``get_postgresql_status``, ``_write_status_response``) and
``utils.cluster_as_json``; Patroni 3's role ``master`` reads as ``primary``.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..config import PatroniMember
from .http import HttpClient, HttpFailure, HttpRules, ssl_context

MAX_TEXT = 64  # characters kept of a name, role or state a member reports
_ROLES = {"master": "primary", "leader": "primary", "primary": "primary"}
_LEADER_ROLES = frozenset({"leader", "primary", "master", "standby_leader"})


class PatroniError(Exception):
    """A Patroni read failed; ``reason`` is timeout, refused, protocol or error."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PatroniStatus:
    """One member's own view (GET /patroni)."""

    name: str | None  # Patroni's member name
    scope: str | None
    role: str  # primary, replica, standby_leader or what the member said (bounded)
    state: str  # running, starting, stopped, crashed, ...
    timeline: int | None
    paused: bool
    cluster_unlocked: bool
    failover_disabled: bool  # tags.nofailover, or failover_priority 0
    replication_state: str | None  # streaming, in archive recovery, ... (replicas)
    wal_position: int | None  # bytes; primary: xlog.location, replica: max(received, replayed)
    replayed_position: int | None
    pending_restart: bool
    dcs_last_seen: float | None  # Unix seconds of Patroni's last good DCS contact
    postmaster_start_time: float | None  # Unix seconds


@dataclass(frozen=True)
class MemberView:
    """One member as the cluster (DCS) lists it (GET /cluster)."""

    name: str
    role: str  # primary (was leader), standby_leader, replica, sync_standby, ...
    state: str  # running, streaming, stopped, ... (Patroni shows a replica's replication state here)
    host: str | None
    port: int | None
    timeline: int | None
    lag_bytes: int | None  # None for the leader and for a lag Patroni reports as "unknown"


@dataclass(frozen=True)
class ClusterView:
    """The cluster as one member reads it from the DCS."""

    leader: str | None
    members: tuple[MemberView, ...]
    paused: bool
    scope: str | None


class PatroniClient:
    """Reads one member's REST API over one connection, kept alive where the server allows it (Patroni
    4.1 answers HTTP/1.0 and closes it after each answer)."""

    def __init__(self, member: PatroniMember, max_bytes: int, timeout: float = 5.0):
        self._base = member.url.rstrip("/")
        self._rules = HttpRules(max_body_bytes=max_bytes, need_whole_body=True, follow_redirects=False)
        self._http = HttpClient(timeout, ssl_context(member.tls_ca_file, not member.tls_skip_verify))

    async def status(self, timeout: float | None = None) -> PatroniStatus:
        """GET /patroni within ``timeout`` seconds (None: under the caller's own cancellation)."""
        return parse_status(await self._json("/patroni", timeout))

    async def cluster(self, timeout: float | None = None) -> ClusterView:
        """GET /cluster within ``timeout`` seconds (None: under the caller's own cancellation)."""
        return parse_cluster(await self._json("/cluster", timeout))

    async def close(self) -> None:
        await self._http.close()

    async def _json(self, path: str, timeout: float | None) -> dict[str, Any]:
        try:
            if timeout is None:
                answer = await self._http.get(self._base + path, self._rules, caller_deadline=True)
            else:
                deadline = asyncio.get_running_loop().time() + timeout
                answer = await self._http.get(self._base + path, self._rules, deadline=deadline)
        except HttpFailure as exc:
            if exc.reason == "timeout" and timeout is not None:
                raise PatroniError("timeout", f"GET {path}: no complete answer within {timeout:g}s") from None
            raise PatroniError(_reason(exc.reason), f"GET {path}: {exc}"[:200]) from None
        if answer.status != 200:
            raise PatroniError("protocol", f"GET {path}: status {answer.status}")
        try:
            document = json.loads(answer.body)
        except (ValueError, RecursionError):  # RecursionError: a deeply nested body within the cap
            raise PatroniError("protocol", f"GET {path}: not JSON") from None
        if not isinstance(document, dict):
            raise PatroniError("protocol", f"GET {path}: not a JSON object")
        return document


async def read_status(member: PatroniMember, timeout: float, max_bytes: int) -> PatroniStatus:
    """One member's GET /patroni on a fresh connection, within ``timeout`` seconds."""
    client = PatroniClient(member, max_bytes, timeout)
    try:
        return await client.status(timeout)
    finally:
        await client.close()


async def read_cluster(member: PatroniMember, timeout: float, max_bytes: int) -> ClusterView:
    """The cluster as ``member`` sees it (GET /cluster) on a fresh connection, within ``timeout``."""
    client = PatroniClient(member, max_bytes, timeout)
    try:
        return await client.cluster(timeout)
    finally:
        await client.close()


def normalise_role(role: str) -> str:
    """primary for Patroni 3's master and /cluster's leader; other roles as they are."""
    return _ROLES.get(role, role)


def parse_status(doc: dict[str, Any]) -> PatroniStatus:
    """A /patroni document checked field by field; raises PatroniError("protocol") on a wrong type."""
    patroni = _get(doc, "patroni", dict, {})
    tags = _get(doc, "tags", dict, {})
    xlog = _get(doc, "xlog", dict, {})
    role = normalise_role(_text(doc, "role", required=True) or "")
    location = _lsn(xlog, "location")
    received = _lsn(xlog, "received_location")
    replayed = _lsn(xlog, "replayed_location")
    if role == "primary":
        wal = location
    else:
        known = [p for p in (received, replayed) if p is not None]
        wal = max(known) if known else None
    priority = tags.get("failover_priority")
    return PatroniStatus(
        name=_text(patroni, "name"),
        scope=_text(patroni, "scope"),
        role=role,
        state=_text(doc, "state", required=True) or "",
        timeline=_int(doc, "timeline"),
        paused=_flag(doc, "pause"),
        cluster_unlocked=_flag(doc, "cluster_unlocked"),
        failover_disabled=tags.get("nofailover") is True
        or (isinstance(priority, int) and not isinstance(priority, bool) and priority <= 0),
        replication_state=_text(doc, "replication_state"),
        wal_position=wal,
        replayed_position=replayed,
        pending_restart=_flag(doc, "pending_restart"),
        dcs_last_seen=_seconds(doc, "dcs_last_seen"),
        postmaster_start_time=_start_time(doc.get("postmaster_start_time")),
    )


def parse_cluster(doc: dict[str, Any]) -> ClusterView:
    """A /cluster document checked field by field; raises PatroniError("protocol") on a wrong type."""
    raw_members = _get(doc, "members", list, [])
    if len(raw_members) > 1000:
        raise PatroniError("protocol", "more than 1000 members")
    members: list[MemberView] = []
    leader: str | None = None
    for raw in raw_members:
        if not isinstance(raw, dict):
            raise PatroniError("protocol", "a member is not a JSON object")
        name = _text(raw, "name", required=True) or ""
        raw_role = _text(raw, "role") or "replica"
        if raw_role in _LEADER_ROLES:
            if leader is not None:
                raise PatroniError("protocol", "two leaders in one cluster view")
            leader = name
        lag = raw.get("lag")
        members.append(
            MemberView(
                name=name,
                role=normalise_role(raw_role),
                state=_text(raw, "state") or "",
                host=_text(raw, "host"),
                port=_int(raw, "port"),
                timeline=_int(raw, "timeline"),
                lag_bytes=lag if isinstance(lag, int) and not isinstance(lag, bool) and lag >= 0 else None,
            )
        )
    return ClusterView(
        leader=leader, members=tuple(members), paused=_flag(doc, "pause"), scope=_text(doc, "scope")
    )


def _reason(reason: str) -> str:
    return reason if reason in ("timeout", "refused", "protocol") else "error"


def _get(doc: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = doc.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise PatroniError("protocol", f"{key}: not a JSON {kind.__name__}")
    return value


def _text(doc: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise PatroniError("protocol", f"{key}: {'missing' if value is None else 'not a string'}")
    return value[:MAX_TEXT]


def _int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise PatroniError("protocol", f"{key}: not a non-negative integer")
    return value


def _lsn(doc: dict[str, Any], key: str) -> int | None:
    """A WAL position; Patroni writes 0 or null where PostgreSQL has none."""
    value = _int(doc, key)
    return value or None


def _flag(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PatroniError("protocol", f"{key}: not a boolean")
    return value


def _seconds(doc: dict[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise PatroniError("protocol", f"{key}: not a timestamp")
    return float(value)


def _start_time(value: object) -> float | None:
    """Patroni writes pg_postmaster_start_time() with str(): '2026-12-07 21:00:00.123+00:00'."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None
