"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``, keys and values base64), with httpx.

Why not a library: the Python etcd3 clients talk gRPC and pin old ``grpcio``/``protobuf`` versions
(python-etcd3 is unmaintained since 2020 and breaks with protobuf 4), while the gateway is part of every
etcd 3.4+ server and needs nothing but HTTP. Patroni made the same choice (its ``etcd3`` DCS speaks the
gateway over urllib3). The recovery service needs five calls: lease grant/keepalive/revoke, a
transaction and a range read.

Endpoints are tried in turn: a connection error, a timeout or a 5xx moves to the next member, so one
member down costs one request timeout at most. Without quorum every member fails (writes and
linearizable reads need the raft leader): the caller gets ``EtcdError``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx


class EtcdError(RuntimeError):
    """No etcd member answered the request successfully (the message names the last failure)."""


@dataclass(frozen=True)
class KeyValue:
    """One key as a range or a transaction returns it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def b64(text: str | bytes) -> str:
    """Base64 of a key or value, as the gateway wants it."""
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def prefix_end(prefix: str) -> str:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    data = bytearray(prefix.encode())
    data[-1] += 1  # keys here are ASCII paths: the last byte never is 0xff
    return b64(bytes(data))


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        base64.b64decode(raw.get("key", "")).decode(errors="replace"),
        base64.b64decode(raw.get("value", "")),
        int(raw.get("create_revision", 0)),
        int(raw.get("mod_revision", 0)),
        int(raw.get("lease", 0)),
    )


@dataclass(frozen=True)
class TxnResult:
    """A transaction's outcome: whether the compares held, the store revision after it, and the keys
    any range in the branch that ran returned."""

    succeeded: bool
    revision: int
    kvs: list[KeyValue]


class EtcdClient:
    """Async client for a list of member URLs (``http://host:2379``)."""

    def __init__(self, endpoints: Sequence[str], timeout: float = 3.0):
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._current = 0
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)))

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first member that answers; raises EtcdError."""
        last = "no endpoint tried"
        for offset in range(len(self.endpoints)):
            index = (self._current + offset) % len(self.endpoints)
            url = f"{self.endpoints[index]}/v3/{path}"
            try:
                response = await self._http.post(url, json=body)
            except httpx.HTTPError as exc:
                last = f"{self.endpoints[index]}: {type(exc).__name__}"
                continue
            try:
                data: dict[str, Any] = response.json()
            except ValueError:
                data = {}
            if response.status_code >= 500 or ("error" in data and response.status_code != 200):
                last = f"{self.endpoints[index]}: {response.status_code} {str(data.get('error', ''))[:120]}"
                if response.status_code < 500:  # a request etcd refuses: another member refuses it too
                    raise EtcdError(last)
                continue
            if response.status_code != 200:
                raise EtcdError(f"{self.endpoints[index]}: HTTP {response.status_code}")
            self._current = index
            return data
        raise EtcdError(f"no etcd member answered /v3/{path} ({last})")

    async def grant(self, ttl: float) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: (lease id, granted TTL)."""
        data = await self.call("lease/grant", {"TTL": max(1, round(ttl))})
        return int(data["ID"]), int(data.get("TTL", 0))

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; its remaining TTL (0: the lease is gone)."""
        data = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(data.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """Drop ``lease`` and every key attached to it."""
        await self.call("lease/revoke", {"ID": str(lease)})

    async def range(self, key: str, prefix: bool = False) -> list[KeyValue]:
        """The key (or every key under the prefix), read linearizably."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        data = await self.call("kv/range", body)
        return [_kv(raw) for raw in data.get("kvs", [])]

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        """Write a key; the store revision after the write."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = await self.call("kv/put", body)
        return int(data.get("header", {}).get("revision", 0))

    async def delete(self, key: str) -> None:
        """Remove a key."""
        await self.call("kv/deleterange", {"key": b64(key)})

    async def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> TxnResult:
        """Run a transaction (gateway JSON shapes for compare and the request ops)."""
        data = await self.call("kv/txn", {"compare": compare, "success": success, "failure": failure})
        kvs = []
        for response in data.get("responses", []):
            kvs += [_kv(raw) for raw in response.get("response_range", {}).get("kvs", [])]
        revision = int(data.get("header", {}).get("revision", 0))
        return TxnResult(bool(data.get("succeeded", False)), revision, kvs)

    async def close(self) -> None:
        await self._http.aclose()


def compare_create(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key``'s create revision equals ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def op_put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    """A put inside a transaction."""
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def op_range(key: str) -> dict[str, Any]:
    """A read of one key inside a transaction."""
    return {"request_range": {"key": b64(key)}}
